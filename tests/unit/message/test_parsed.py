"""The webhook's `parsed` payload (SPEC section 3b) read from real, malformed and hostile mail:
always JSON, bodies equal to the stdlib's, broken parts sent as received with their error."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import tracemalloc
from collections.abc import Iterator
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import inbound.message.walk
from inbound.core.message import MimeLimits
from inbound.message.mime import MAX_HEADER_BYTES, walk_mime
from inbound.message.parsed import (
    AttachmentStore,
    ParsedMessage,
    parse_for_webhook,
    render_parsed,
)
from tests.conftest import CORPUS_EML
from tests.mime_samples import many_parts
from tests.unit.message.test_mime import PIECES

CORPUS = sorted(CORPUS_EML.rglob("*.eml"))
LIMITS = MimeLimits()
MESSAGE_ID = "0" * 40


def parsed(raw: bytes) -> ParsedMessage:
    return parse_for_webhook(raw, limits=LIMITS)


def render(
    message: ParsedMessage,
    *,
    attachments: str = "inline",
    max_inline_bytes: int = 1024 * 1024,
    store: AttachmentStore | None = None,
) -> dict[str, object]:
    return asyncio.run(
        render_parsed(
            message,
            message_id=MESSAGE_ID,
            timestamp="2026-12-06T13:00:00.000Z",
            rule="webhooks",
            mail_from="sender@example.com",
            rcpt_to=["rcpt@example.net"],
            verdicts={"spam": "PASS", "virus": "PASS"},
            dmarc_policy=None,
            attachments=attachments,  # type: ignore[arg-type]
            max_inline_bytes=max_inline_bytes,
            store=store,
        )
    )


def as_json(payload: dict[str, object]) -> dict[str, object]:
    """What an application receives: UTF-8 JSON (no lone surrogate can pass), read back."""
    decoded: dict[str, object] = json.loads(json.dumps(payload, ensure_ascii=False).encode())
    return decoded


def attachments_of(payload: dict[str, object]) -> list[dict[str, object]]:
    found = payload["attachments"]
    assert isinstance(found, list)
    return found


# -- the corpus ----------------------------------------------------------------------------


def test_every_corpus_message_gives_a_json_payload_and_says_what_was_broken() -> None:
    broken: list[str] = []
    parts = 0
    for path in CORPUS:
        payload = as_json(render(parsed(path.read_bytes()), max_inline_bytes=16 * 1024))
        for attachment in attachments_of(payload):
            parts += 1
            assert sum(key in attachment for key in ("content", "url", "omitted")) == 1
            if "error" in attachment:
                broken.append(f"{path.name}: {attachment['content_type']}: {attachment['error']}")
    print(f"\n{len(broken)} of {parts} attachment parts in {len(CORPUS)} corpus messages sent as")
    print("received because broken:\n  " + "\n  ".join(broken))
    assert len(CORPUS) > 100
    assert any("not valid gb2312" in line for line in broken)  # a real spam's charset lie


def stdlib_bodies(raw: bytes) -> list[bytes]:
    """The undecoded bodies of the leaves the stdlib finds outside message/* parts: the
    reference for the bodies the payload reads."""

    def parts(part: Message) -> Iterator[Message]:
        yield part
        payload = part.get_payload()
        if isinstance(payload, list) and part.get_content_maintype() != "message":
            for child in payload:
                assert isinstance(child, Message)
                yield from parts(child)

    root = BytesParser(policy=compat32).parsebytes(raw)
    # The stored payload: get_payload() would replace 8-bit bytes (kept as surrogate escapes).
    return [
        str(getattr(part, "_payload")).encode("utf-8", "surrogateescape")  # noqa: B009
        for part in parts(root)
        if part.get_content_maintype() not in ("multipart", "message")
    ]


def walked_bodies(raw: bytes) -> list[bytes]:
    walk = walk_mime(io.BytesIO(raw), MimeLimits(10_000, 100), spans=True)
    found = []
    for span in walk.spans:
        if span.nested or span.whole or span.part.get_content_maintype() == "multipart":
            continue
        body = raw[span.start : span.end]
        if span.at_boundary:
            body = body.removesuffix(b"\n").removesuffix(b"\r") if body else body
        found.append(body)
    return found


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_corpus_bodies_are_the_stdlib_bodies(path: Path) -> None:
    raw = path.read_bytes()
    assert walked_bodies(raw) == stdlib_bodies(raw)


@settings(max_examples=1000, deadline=None)
@given(pieces=st.lists(st.sampled_from(PIECES), max_size=50), chunk=st.sampled_from([1, 3, 65536]))
def test_hostile_structures_give_the_stdlib_bodies_whatever_the_chunk(
    pieces: list[bytes], chunk: int
) -> None:
    raw = b"".join(pieces)
    original = inbound.message.walk.CHUNK
    inbound.message.walk.CHUNK = chunk  # delimiters and line breaks cut between two reads
    try:
        assert walked_bodies(raw) == stdlib_bodies(raw)
    finally:
        inbound.message.walk.CHUNK = original


# -- specific messages ---------------------------------------------------------------------


def test_rfc2047_subject_and_display_names_are_decoded() -> None:
    message = parsed((CORPUS_EML / "real" / "mikel__japanese_iso_2022.eml").read_bytes())
    assert message.subject == "まみむめも"
    assert [(m.name, m.address) for m in message.to] == [("みける", "raasdnil@gmail.com")]
    payload = as_json(render(message))
    subjects = [h for h in payload["headers"] if h["name"] == "Subject"]  # type: ignore[attr-defined]
    assert subjects == [{"name": "Subject", "value": "まみむめも"}]


def test_encoded_words_in_two_charsets_make_one_subject() -> None:
    message = parsed((CORPUS_EML / "real" / "mime4j_mimetools__intl_rfc2047.eml").read_bytes())
    assert message.subject == "If you can read this you understand the example... so, cool!"
    assert message.to[0].name == "Keld Jørn Simonsen"


def test_a_comma_inside_an_encoded_display_name_does_not_split_the_address() -> None:
    message = parsed((CORPUS_EML / "real" / "spamscope__rfc2047_comma_in_name.eml").read_bytes())
    assert message.from_ is not None
    assert (message.from_.name, message.from_.address) == (
        "LastßlName, FirstName",
        "comma.name@example.com",
    )


@pytest.mark.parametrize("charset", ["iso-8859-15", "ISO-8859-1"])
def test_a_latin_body_is_decoded_by_its_charset(charset: str) -> None:
    raw = (CORPUS_EML / "real" / "mime4j_mimetools__german_qp.eml").read_bytes()
    raw = raw.replace(b'charset="iso-8859-15"', f'charset="{charset}"'.encode())
    message = parsed(raw)
    assert message.text is not None
    assert "8 Bit Sönderzäichen" in message.text
    assert "Grüße" in message.text
    assert message.from_ is not None
    assert message.from_.name == "Jörn Reder"
    assert message.date == "2005-12-21T22:02:44+01:00"


def test_multipart_alternative_gives_both_text_and_html() -> None:
    name = "constructed__gtube_html_alternative.eml"
    message = parsed((CORPUS_EML / "spam-virus" / name).read_bytes())
    assert message.text is not None
    assert message.html is not None
    assert "<" not in message.text
    assert message.html.lstrip().lower().startswith("<")
    assert message.attachments == ()


def test_attachments_carry_the_sha256_of_their_decoded_bytes() -> None:
    raw = (CORPUS_EML / "real" / "mailpit__mime_attachment.eml").read_bytes()
    payload = as_json(render(parsed(raw)))
    stdlib = [
        part.get_payload(decode=True)
        for part in BytesParser(policy=compat32).parsebytes(raw).walk()
        if part.get_filename()
    ]
    found = attachments_of(payload)
    assert [a["filename"] for a in found] == ["inline-image.jpg", "Sample PDF.pdf"]
    assert found[0]["content_id"] == "part1.845LaYlX.wtWMpWwa@gmail.com"  # no <>: a cid: URL
    for attachment, decoded in zip(found, stdlib, strict=True):
        content = base64.b64decode(str(attachment["content"]))
        assert content == decoded
        assert attachment["sha256"] == hashlib.sha256(content).hexdigest()
        assert attachment["size"] == len(content)
        assert "error" not in attachment


def test_an_eicar_attachment_is_an_attachment_not_text() -> None:
    name = "constructed__eicar_attachment_base64.eml"
    message = parsed((CORPUS_EML / "spam-virus" / name).read_bytes())
    [attachment] = message.attachments
    assert attachment.filename == "eicar.com"
    assert attachment.content.startswith(b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR")
    assert message.text == "The attached file eicar.com is the EICAR anti-virus test file.\r\n"


BROKEN_BASE64 = (
    b"From: a@example.com\r\nSubject: broken\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain\r\n\r\nSee the picture.\r\n"
    b'--b\r\nContent-Type: image/gif; name="xx.gif"\r\nContent-Disposition: attachment\r\n'
    # cpython's msg_15.txt: a body that is not base64 at all (29 letters: one too many)
    b"Content-Transfer-Encoding: base64\r\n\r\nSome removed base64 encoded chars.\r\n"
    b"--b--\r\n"
)


def test_a_malformed_base64_part_is_sent_as_received_with_its_error() -> None:
    payload = as_json(render(parsed(BROKEN_BASE64)))
    [attachment] = attachments_of(payload)
    assert attachment["filename"] == "xx.gif"
    assert attachment["content_type"] == "image/gif"
    assert str(attachment["error"]).startswith("invalid base64")
    received = b"Some removed base64 encoded chars."
    assert base64.b64decode(str(attachment["content"])) == received
    assert attachment["sha256"] == hashlib.sha256(received).hexdigest()
    assert payload["text"] == "See the picture."


def test_missing_base64_padding_loses_nothing() -> None:
    raw = (CORPUS_EML / "malformed" / "haraka__varied_fold_lengths.eml").read_bytes()
    attachments = parsed(raw).attachments
    assert len(attachments) == 6
    assert {a.error for a in attachments} == {None}
    assert len({a.sha256 for a in attachments}) == 1  # the same GIF, folded six ways


def test_text_in_a_charset_it_is_not_valid_in_is_sent_as_received() -> None:
    raw = (CORPUS_EML / "real" / "spamscope__gb2312_plain.eml").read_bytes()
    message = parsed(raw)
    [attachment] = message.attachments
    assert attachment.error == "not valid gb2312: byte 26"
    assert attachment.content_type == "text/plain"
    assert message.text is None


def test_the_bytes_past_a_mime_limit_are_sent_as_received() -> None:
    raw = many_parts(1_001)  # x.exe is the part beyond the limit
    message = parsed(raw)
    last = message.attachments[-1]
    assert last.error == "more than 1000 MIME parts: the rest of the message, as received"
    assert b"filename=x.exe" in last.content
    assert raw.endswith(last.content)
    assert message.text is not None
    assert message.text.count("hi") == 999


FILLER = b"X-Filler: " + b"y" * 70 + b"\r\n"
HUGE_BLOCK = FILLER * (MAX_HEADER_BYTES // len(FILLER) + 1)


def test_a_part_whose_header_block_is_over_the_limit_is_sent_from_its_first_line() -> None:
    raw = (
        b"Subject: s\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nfirst\r\n"
        b"--b\r\nContent-Disposition: attachment; filename=x.exe\r\n" + HUGE_BLOCK
        + b"\r\nMZ\r\n--b--\r\n"
    )  # fmt: skip
    message = parsed(raw)
    assert message.text == "first"
    [rest] = message.attachments
    assert rest.error == (
        f"a MIME header block over {MAX_HEADER_BYTES} bytes: the rest of the message, as received"
    )
    assert rest.content.startswith(b"Content-Disposition: attachment; filename=x.exe\r\n")
    assert raw.endswith(rest.content)


def test_a_message_whose_own_header_block_is_over_the_limit_is_sent_whole() -> None:
    raw = b"Subject: s\r\n" + HUGE_BLOCK + b"\r\nbody\r\n"
    message = parsed(raw)
    assert message.subject == "s"
    [rest] = message.attachments
    assert rest.content == raw


# -- hostile input ---------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(raw=st.binary(max_size=4096))
def test_arbitrary_bytes_never_raise_and_give_json(raw: bytes) -> None:
    as_json(render(parsed(raw), max_inline_bytes=64))


BODY_PIECES = [
    *PIECES,
    b"Content-Transfer-Encoding: base64\r\n", b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"Content-Transfer-Encoding: x-unknown\r\n", b"Content-Type: text/plain; charset=utf-7\r\n",
    b"Content-Type: text/html; charset=unicode_escape\r\n", b"Content-Type: text/plain; charset=zlib\r\n",
    b"Content-Type: text/plain; charset*=utf-8''\xe2\x82\r\n", b"Content-Type: text/plain; charset=punycode\r\n",
    b"Content-ID: <\xff@x>\r\n", b"Subject: =?utf-7?Q?+2AA-?=\r\n", b"To: =?x?q?a?= <a@b>, \xc3(\r\n",
    b"Date: Mon, 32 Foo 99999 99:99:99 +9999\r\n", b"From: \"a\\\" <@>\r\n",
    b"+2AA-", b"\\ud800", b"aGk=", b"aGk", b"=\r\n", b"=FF", b"\xff\xfe", b"\x00",
]  # fmt: skip


@settings(max_examples=1000, deadline=None)
@given(pieces=st.lists(st.sampled_from(BODY_PIECES), max_size=60))
def test_hostile_messages_never_raise_and_give_json(pieces: list[bytes]) -> None:
    as_json(render(parsed(b"".join(pieces)), max_inline_bytes=64))


def test_memory_is_within_three_times_a_40_mb_message() -> None:
    """Five 5.7 MB attachments (base64), text and HTML: parsing holds the decoded attachments
    and the text beside the message, never a copy of it per step."""
    blob = bytes(range(256)) * (5_700_000 // 256)
    encoded = base64.encodebytes(blob)
    parts = [b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + b"caf\xc3\xa9 " * 250_000]
    parts.append(b"--b\r\nContent-Type: text/html\r\n\r\n<p>" + b"x" * 1_000_000 + b"</p>")
    for i in range(5):
        parts.append(
            b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: "
            b"base64\r\nContent-Disposition: attachment; filename=f%d.bin\r\n\r\n" % i + encoded
        )
    raw = b"Subject: big\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    raw += b"\r\n".join(parts) + b"\r\n--b--\r\n"
    assert 40_000_000 < len(raw) < 42_000_000
    tracemalloc.start()
    try:
        message = parsed(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [a.size for a in message.attachments] == [len(blob)] * 5
    print(f"\nparsing a {len(raw) / 1e6:.1f} MB message allocated at most {peak / 1e6:.1f} MB")
    assert len(raw) + peak < 3 * len(raw)
