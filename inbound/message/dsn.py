"""Delivery status notifications (RFC 3464) for bounce actions that run after acceptance.

This module owns the bytes of a DSN: a `multipart/report` (RFC 6522) with a readable part, a
`message/delivery-status` part and the original header block (`text/rfc822-headers`).
Pure: no I/O and no clock (times and the id come in as arguments); sending is the relay's job.
Nothing from the inputs reaches a header with a line break in it.
"""

from __future__ import annotations

import io
import quopri
import re
from datetime import datetime
from email.charset import QP, Charset
from email.generator import BytesGenerator
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.mime.text import MIMEText
from email.policy import compat32
from email.utils import format_datetime

from inbound.core.services import BounceRequest

# RFC 5322 §2.1 / RFC 5321 §2.3.8: the message goes out with CRLF line endings.
_POLICY = compat32.clone(linesep="\r\n", max_line_length=78)
# C0 controls, DEL and the Unicode line breaks a str.splitlines() reader would honour: none of
# them may reach a header (no header injection through a rule's sender or message).
_CONTROLS = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")
_NON_ASCII = re.compile("[^\x00-\x7f]")
_REPLY_CODE = re.compile(r"[245][0-9][0-9]")
# RFC 3463 §2: class.subject.detail.
_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")
_HOST_JUNK = re.compile(r"[^A-Za-z0-9.:\[\]-]")
_ID_JUNK = re.compile(r"[^A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]")
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def build_dsn(
    bounce: BounceRequest,
    *,
    arrival: datetime,
    now: datetime,
    dsn_id: str,
    envelope_id: str | None = None,
) -> bytes:
    """The DSN for `bounce`, addressed from `bounce.sender` to `bounce.to`, with CRLF endings.

    `arrival` is when the original message was received (Arrival-Date), `now` dates the DSN,
    `dsn_id` makes its Message-ID, `envelope_id` is the ENVID of RFC 3461 if the sender gave one.
    """
    host = _hostname(bounce.reporting_mta)
    code, status = _reply(bounce.smtp_reply_code, bounce.status_code)
    # RFC 3464 §2.3.3: a 4xx reply means the message may still be delivered: "delayed".
    delayed = code.startswith("4")
    diagnostic = _ascii(_header_text(bounce.diagnostic)) or "no reason given"

    root = MIMEMultipart("report", report_type="delivery-status", policy=_POLICY)
    content_type = root["Content-Type"]
    del root["Content-Type"], root["MIME-Version"]
    root["From"] = _header_text(bounce.sender)
    root["To"] = _header_text(bounce.to)
    root["Subject"] = f"Delivery Status Notification ({'Delay' if delayed else 'Failure'})"
    root["Date"] = format_datetime(now)
    root["Message-ID"] = f"<{_ID_JUNK.sub('', dsn_id) or 'dsn'}@{host}>"
    # RFC 3834 §5: an automatic response, so responders and vacation programs stay quiet.
    root["Auto-Submitted"] = "auto-replied"
    root["MIME-Version"] = "1.0"
    root["Content-Type"] = content_type
    root.preamble = "This is a delivery status notification in MIME format (RFC 3464)."

    root.attach(_readable_part(bounce, host, code, status, diagnostic, delayed=delayed))
    root.attach(
        _status_part(
            bounce,
            host,
            code,
            status,
            diagnostic,
            delayed=delayed,
            arrival=arrival,
            envelope_id=envelope_id,
        )
    )
    root.attach(_headers_part(bounce.original_headers))

    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False, policy=_POLICY).flatten(root)
    return out.getvalue()


def _readable_part(
    bounce: BounceRequest, host: str, code: str, status: str, diagnostic: str, *, delayed: bool
) -> Message:
    if delayed:
        lead = "Delivery to the following recipients was delayed:"
    else:
        lead = "Your message could not be delivered to the following recipients:"
    lines = [f"This is the mail system at host {host}.", "", lead, ""]
    lines += [f"    {_header_text(rcpt)}" for rcpt in bounce.recipients]
    lines += [
        "",
        f"Reason: {code} {status} {_header_text(bounce.diagnostic) or diagnostic}",
        "",
        f"Message ID: {_header_text(bounce.message_id)}",
        "The headers of your message are attached.",
        "",
    ]
    text = "\n".join(lines)
    if text.isascii():
        part = MIMEText(text, "plain", "us-ascii", policy=_POLICY)
    else:
        charset = Charset("utf-8")
        charset.body_encoding = QP
        part = MIMEText(text, "plain", charset, policy=_POLICY)  # type: ignore[arg-type]
    del part["MIME-Version"]
    return part


def _status_part(
    bounce: BounceRequest,
    host: str,
    code: str,
    status: str,
    diagnostic: str,
    *,
    delayed: bool,
    arrival: datetime,
    envelope_id: str | None,
) -> Message:
    # RFC 3464 §2.2: one block of per-message fields, then one block per recipient (§2.3).
    per_message = Message(policy=_POLICY)
    per_message["Reporting-MTA"] = f"dns; {host}"
    if envelope_id:
        per_message["Original-Envelope-Id"] = _ascii(_header_text(envelope_id))
    per_message["Arrival-Date"] = format_datetime(arrival)
    blocks: list[Message | str] = [per_message]
    for rcpt in bounce.recipients:
        block = Message(policy=_POLICY)
        block["Final-Recipient"] = _final_recipient(rcpt)
        block["Action"] = "delayed" if delayed else "failed"
        block["Status"] = status
        block["Diagnostic-Code"] = f"smtp; {code} {status} {diagnostic}"
        blocks.append(block)
    part = MIMENonMultipart("message", "delivery-status", policy=_POLICY)
    del part["MIME-Version"]
    part.set_payload(blocks)
    return part


def _headers_part(original: bytes) -> Message:
    # RFC 6522 §4 (was RFC 3462): the header block only, never the body.
    block = _HEADER_END.split(original, maxsplit=1)[0]
    lines = b"\n".join(block.splitlines()) + b"\n"
    part = MIMENonMultipart("text", "rfc822-headers", policy=_POLICY)
    del part["MIME-Version"]
    if lines.isascii():
        part.set_payload(lines.decode("ascii"))
    else:
        # 8-bit header bytes (RFC 6532 or plain junk) travel as quoted-printable, so the DSN is
        # 7-bit and any relay takes it.
        part["Content-Transfer-Encoding"] = "quoted-printable"
        part.set_payload(quopri.encodestring(lines).decode("ascii"))
    return part


def _reply(code: str, status: str) -> tuple[str, str]:
    """A reply code and an enhanced status that agree; junk falls back to a permanent failure."""
    code = code.strip()
    if not _REPLY_CODE.fullmatch(code):
        code = "550"
    status = status.strip()
    if not _STATUS.fullmatch(status) or status[0] != code[0]:
        status = f"{code[0]}.0.0"
    return code, status


def _final_recipient(address: str) -> str:
    clean = _header_text(address)
    if clean.isascii():
        return f"rfc822; {clean}"
    # RFC 6533 §3: an address with non-ASCII characters is "utf-8" typed, and those characters
    # are written as \x{HEX} so the field stays 7-bit.
    escaped = _NON_ASCII.sub(lambda m: f"\\x{{{ord(m.group()):X}}}", clean)
    return f"utf-8; {escaped}"


def _hostname(text: str) -> str:
    return _HOST_JUNK.sub("", text) or "localhost"


def _header_text(text: str) -> str:
    return " ".join(_CONTROLS.sub(" ", text).split())


def _ascii(text: str) -> str:
    # RFC 3464 §2.1.1: delivery-status fields are US-ASCII.
    return _NON_ASCII.sub("?", text)
