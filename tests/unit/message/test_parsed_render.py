"""The `parsed` payload's JSON (SPEC section 3b): attachments inline, stored and announced by
URL under a deterministic key, or omitted with the reason; the fields in SPEC order."""

from __future__ import annotations

import hashlib

import pytest

from inbound.message.parsed import AttachmentStore, attachment_key
from inbound.targets.memory import MemoryServices
from tests.conftest import CORPUS_EML
from tests.unit.message.test_parsed import MESSAGE_ID, as_json, attachments_of, parsed, render


def test_over_max_inline_bytes_goes_to_the_store_under_a_deterministic_key() -> None:
    fakes = MemoryServices()
    store = AttachmentStore(fakes.blobs, "mail-attachments")
    raw = (CORPUS_EML / "real" / "mailpit__mime_attachment.eml").read_bytes()
    payload = as_json(render(parsed(raw), max_inline_bytes=10_000, store=store))
    image, pdf = attachments_of(payload)
    key = f"{MESSAGE_ID}/0-inline-image.jpg"
    assert image["url"] == f"memory://mail-attachments/{key}"
    stored = fakes.blobs.objects[("mail-attachments", key)]
    assert hashlib.sha256(stored).hexdigest() == image["sha256"]
    assert "content" in pdf
    assert "url" not in pdf


@pytest.mark.parametrize(
    ("declared", "served"),
    [
        ("image/png", "image/png"),
        ("Application/VND.ms-excel", "application/vnd.ms-excel"),
        ("image/p ng", "application/octet-stream"),
        ("\u00edmage/png", "application/octet-stream"),
    ],
)
def test_a_stored_attachment_is_served_as_its_own_type(declared: str, served: str) -> None:
    raw = (
        "From: a@example.com\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        f"--b\r\nContent-Type: {declared}\r\n"
        'Content-Disposition: attachment; filename="x"\r\n\r\nBYTES\r\n--b--\r\n'
    ).encode()
    fakes = MemoryServices()
    store = AttachmentStore(fakes.blobs, "b")
    (attachment,) = attachments_of(render(parsed(raw), attachments="url", store=store))
    assert attachment["url"] == f"memory://b/{MESSAGE_ID}/0-x"
    assert fakes.blobs.content_types[("b", f"{MESSAGE_ID}/0-x")] == served


def test_attachments_url_and_omit_and_no_store() -> None:
    message = parsed((CORPUS_EML / "real" / "mailpit__mime_attachment.eml").read_bytes())
    store = AttachmentStore(MemoryServices().blobs, "b")
    every_url = attachments_of(render(message, attachments="url", store=store))
    assert all(str(a["url"]).startswith("memory://b/") for a in every_url)
    omitted = attachments_of(render(message, attachments="omit", store=store))
    assert [a["omitted"] for a in omitted] == ["attachments: omit"] * 2
    assert all(len(str(a["sha256"])) == 64 for a in omitted)  # what was left out is still said
    no_store = attachments_of(render(message, max_inline_bytes=10_000))
    assert "content" in no_store[1]
    assert no_store[0]["omitted"] == (
        "larger than 10000 bytes, and no attachments_bucket to store it in"
    )


@pytest.mark.parametrize(
    ("filename", "key"),
    [
        ("report.pdf", "report.pdf"),
        ("ciële.txt", "ciele.txt"),
        ("../../etc/passwd", "etc_passwd"),
        ("日本語.doc", "doc"),
        (None, "attachment"),
        ("...", "attachment"),
        ("a" * 300 + ".zip", "a" * 96 + ".zip"),
    ],
)
def test_attachment_keys_are_safe(filename: str | None, key: str) -> None:
    assert attachment_key(MESSAGE_ID, 3, filename) == f"{MESSAGE_ID}/3-{key}"


def test_the_payload_has_the_spec_fields_in_order() -> None:
    raw = (CORPUS_EML / "real" / "mikel__basic_email.eml").read_bytes()
    payload = as_json(render(parsed(raw)))
    assert list(payload) == [
        "id", "timestamp", "rule", "envelope", "from", "to", "cc", "reply_to", "subject",
        "date", "message_id", "in_reply_to", "references", "headers", "text", "html",
        "attachments", "verdicts", "dmarc_policy",
    ]  # fmt: skip
    assert payload["envelope"] == {
        "mail_from": "sender@example.com",
        "rcpt_to": ["rcpt@example.net"],
    }
    assert payload["verdicts"] == {"spam": "PASS", "virus": "PASS"}
