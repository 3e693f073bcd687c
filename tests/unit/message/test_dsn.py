"""DSN bytes: a multipart/report that parses back, per-recipient status, clean headers."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.policy import default

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inbound.core.services import BounceRequest
from inbound.message.dsn import build_dsn

pytestmark = pytest.mark.timeout(30)

ARRIVAL = datetime(2026, 11, 23, 10, 0, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 23, 10, 0, 5, tzinfo=UTC)
ORIGINAL_HEADERS = (
    b"From: Alice <alice@sender.example>\r\n"
    b"To: support@example.com\r\n"
    b"Subject: help\r\n"
    b"Message-ID: <m1@sender.example>\r\n"
)
BOUNCE = BounceRequest(
    message_id="0123456789abcdefghijklmnopqrstuvwxyz0123",
    sender="mailer-daemon@example.com",
    to="alice@sender.example",
    recipients=("support@example.com", "sales@example.com"),
    smtp_reply_code="550",
    status_code="5.1.1",
    diagnostic="Mailbox does not exist",
    reporting_mta="mx.example.com",
    original_headers=ORIGINAL_HEADERS,
)


def build(bounce: BounceRequest = BOUNCE, **kwargs: str) -> bytes:
    return build_dsn(bounce, arrival=ARRIVAL, now=NOW, dsn_id="dsn0001", **kwargs)


def parse(out: bytes) -> EmailMessage:
    message = BytesParser(policy=default).parsebytes(out)
    assert isinstance(message, EmailMessage)
    return message


def parts(out: bytes) -> list[EmailMessage]:
    return list(parse(out).iter_parts())  # type: ignore[arg-type]


def status_blocks(out: bytes) -> list[Message]:
    report = parts(out)[1]
    assert report.get_content_type() == "message/delivery-status"
    blocks = report.get_payload()
    assert isinstance(blocks, list)
    return [block for block in blocks if isinstance(block, Message)]


def test_is_a_multipart_report_of_three_parts() -> None:
    message = parse(build())
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in message.iter_parts()] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]


def test_top_level_headers() -> None:
    message = parse(build())
    assert message["From"] == "mailer-daemon@example.com"
    assert message["To"] == "alice@sender.example"
    assert message["Subject"] == "Delivery Status Notification (Failure)"
    assert message["Date"] == "Mon, 23 Nov 2026 10:00:05 +0000"
    assert message["Message-ID"] == "<dsn0001@mx.example.com>"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["MIME-Version"] == "1.0"


def test_crlf_line_endings_only() -> None:
    out = build()
    assert b"\r\n" in out
    assert re.search(rb"[^\r]\n|\r[^\n]", out) is None


def test_per_message_fields() -> None:
    first = status_blocks(build(envelope_id="ENV-42"))[0]
    assert first["Reporting-MTA"] == "dns; mx.example.com"
    assert first["Arrival-Date"] == "Mon, 23 Nov 2026 10:00:01 +0000"
    assert first["Original-Envelope-Id"] == "ENV-42"


def test_no_envelope_id_field_without_one() -> None:
    assert "Original-Envelope-Id" not in status_blocks(build())[0]


def test_one_block_per_recipient_with_status_and_diagnostic() -> None:
    blocks = status_blocks(build())[1:]
    assert [b["Final-Recipient"] for b in blocks] == [
        "rfc822; support@example.com",
        "rfc822; sales@example.com",
    ]
    for block in blocks:
        assert block["Action"] == "failed"
        assert block["Status"] == "5.1.1"
        assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 Mailbox does not exist"


@pytest.mark.parametrize(
    ("code", "status", "action", "expected_status", "subject"),
    [
        pytest.param("550", "5.1.1", "failed", "5.1.1", "Failure", id="mailbox_does_not_exist"),
        pytest.param("552", "5.3.4", "failed", "5.3.4", "Failure", id="message_too_large"),
        pytest.param("554", "", "failed", "5.0.0", "Failure", id="no_status_given"),
        pytest.param("450", "4.0.0", "delayed", "4.0.0", "Delay", id="temporary_failure"),
        pytest.param("451", "", "delayed", "4.0.0", "Delay", id="temporary_no_status"),
        pytest.param("550", "4.2.2", "failed", "5.0.0", "Failure", id="status_disagrees"),
        pytest.param("5xx", "junk", "failed", "5.0.0", "Failure", id="junk_code"),
    ],
)
def test_action_failed_or_delayed(
    code: str, status: str, action: str, expected_status: str, subject: str
) -> None:
    out = build(replace(BOUNCE, smtp_reply_code=code, status_code=status))
    block = status_blocks(out)[1]
    assert block["Action"] == action
    assert block["Status"] == expected_status
    assert block["Diagnostic-Code"].startswith(f"smtp; {code if code[1:].isdigit() else '550'} ")
    assert parse(out)["Subject"] == f"Delivery Status Notification ({subject})"


def test_readable_part_names_recipients_and_reason() -> None:
    text = parts(build())[0].get_content()
    assert "support@example.com" in text
    assert "sales@example.com" in text
    assert "550 5.1.1 Mailbox does not exist" in text
    assert BOUNCE.message_id in text


def test_original_headers_part_has_the_header_block_only() -> None:
    whole = ORIGINAL_HEADERS + b"\r\nthe body must not be returned\r\n"
    part = parts(build(replace(BOUNCE, original_headers=whole)))[2]
    content = part.get_payload(decode=True)
    assert isinstance(content, bytes)
    assert content.replace(b"\r\n", b"\n") == ORIGINAL_HEADERS.replace(b"\r\n", b"\n")
    assert b"body" not in content


def test_eight_bit_original_headers_keep_their_bytes_and_the_dsn_is_seven_bit() -> None:
    raw = b"Subject: caf\xc3\xa9 \xff\r\nFrom: a@b.example\r\n"
    out = build(replace(BOUNCE, original_headers=raw))
    assert out.isascii()
    content = parts(out)[2].get_payload(decode=True)
    assert isinstance(content, bytes)
    assert content.replace(b"\r\n", b"\n") == raw.replace(b"\r\n", b"\n")


def test_injected_line_breaks_never_make_headers() -> None:
    evil = replace(
        BOUNCE,
        sender="mailer-daemon@example.com\r\nBcc: victim@elsewhere.example",
        to="alice@sender.example\nX-Injected: 1",
        recipients=("support@example.com\r\nX-Injected: 2",),
        diagnostic="bad\r\nX-Injected: 3\r\n\r\nbody",
        reporting_mta="mx.example.com\r\nX-Injected: 4",
    )
    out = build(evil, envelope_id="e\r\nX-Injected: 5")
    message = parse(out)
    assert "Bcc" not in message
    assert "X-Injected" not in message
    for block in status_blocks(out):
        assert "X-Injected" not in block
    raw = message_from_bytes(out)
    assert raw["From"] == "mailer-daemon@example.com Bcc: victim@elsewhere.example"
    assert raw["Message-ID"] == "<dsn0001@mx.example.comX-Injected:4>"


def test_non_ascii_recipient_is_utf8_typed_and_seven_bit() -> None:
    out = build(replace(BOUNCE, recipients=("jörg@example.com",), diagnostic="Boîte pleine"))
    block = status_blocks(out)[1]
    assert block["Final-Recipient"] == "utf-8; j\\x{F6}rg@example.com"
    assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 Bo?te pleine"
    assert "Boîte pleine" in parts(out)[0].get_content()
    assert out.isascii()


@given(
    sender=st.text(max_size=40),
    to=st.text(max_size=40),
    diagnostic=st.text(max_size=200),
    recipients=st.lists(st.text(max_size=40), max_size=3),
    headers=st.binary(max_size=300),
)
def test_any_input_gives_a_parsable_report(
    sender: str, to: str, diagnostic: str, recipients: list[str], headers: bytes
) -> None:
    bounce = replace(
        BOUNCE,
        sender=sender,
        to=to,
        diagnostic=diagnostic,
        recipients=tuple(recipients),
        original_headers=headers,
    )
    out = build(bounce)
    message = message_from_bytes(out)
    assert message.get_content_type() == "multipart/report"
    names = [name.lower() for name in message]
    assert names == [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "auto-submitted",
        "mime-version",
        "content-type",
    ]
    payload = message.get_payload()
    assert isinstance(payload, list)
    assert len(payload) == 3
    report = payload[1]
    assert isinstance(report, Message)
    assert len(report.get_payload()) == 1 + len(recipients)
