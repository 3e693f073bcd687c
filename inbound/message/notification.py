"""The SES JSON objects, shaped as SES writes them: `mail`, `receipt`, notification, events.

This module owns the SES field names, types and limits (SPEC section 5, real samples in
fixtures/corpus/ses/). Pure: times come in as arguments; malformed messages never raise.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from inbound.core.message import Header
from inbound.core.verdicts import Verdicts
from inbound.message.parse import parse_headers

JsonObject = dict[str, Any]

# SES: "headersTruncated ... true if the headers were > 10 KB" (bytes of names and values).
HEADERS_BUDGET = 10 * 1024
SNS_SUBJECT = "Amazon SES Email Receipt Notification"
# Not SES's: the SQS message attribute by which a receiver of `inbound serve --spool s3://`
# names the rule set a message was received under (stored at PREFIX + rules/DIGEST.yaml).
DIGEST_ATTRIBUTE = "inbound.rules-digest"
# commonHeaders keys in SES's order: (key, header name, list of addresses?).
_COMMON_HEADERS = (
    ("returnPath", "return-path", False),
    ("from", "from", True),
    ("replyTo", "reply-to", True),
    ("date", "date", False),
    ("to", "to", True),
    ("cc", "cc", True),
    ("bcc", "bcc", True),
    ("sender", "sender", True),
    ("messageId", "message-id", False),
    ("subject", "subject", False),
)
_VERDICT_KEYS = (
    ("spamVerdict", "spam"),
    ("virusVerdict", "virus"),
    ("spfVerdict", "spf"),
    ("dkimVerdict", "dkim"),
    ("dmarcVerdict", "dmarc"),
)


def ses_timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and `Z`, as SES and SNS write it; naive means UTC."""
    utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


def mail_object(*, message_id: str, timestamp: datetime, source: str, raw: bytes) -> JsonObject:
    """The `mail` object for `raw` (the message with our prepended headers)."""
    facts = parse_headers(raw)  # never the parts: a 40 MB message costs its header block
    headers, truncated = _header_list(facts.headers)
    return {
        "timestamp": ses_timestamp(timestamp),
        "source": source,
        "messageId": message_id,
        "destination": list(dict.fromkeys(facts.to_addresses + facts.cc_addresses)),
        "headersTruncated": truncated,
        "headers": headers,
        "commonHeaders": _common_headers(facts.headers),
    }


def receipt_object(
    *,
    timestamp: datetime,
    processing_ms: int,
    recipients: Sequence[str],
    verdicts: Verdicts,
    action: Mapping[str, object],
) -> JsonObject:
    """The `receipt` object of one rule's action; `dmarcPolicy` only when the verdicts carry one."""
    out: JsonObject = {
        "timestamp": ses_timestamp(timestamp),
        "processingTimeMillis": processing_ms,
        "recipients": list(recipients),
    }
    for key, kind in _VERDICT_KEYS:
        out[key] = {"status": verdicts.of(kind).value}
    if verdicts.dmarc_policy is not None:
        out["dmarcPolicy"] = verdicts.dmarc_policy.value
    out["action"] = dict(action)
    return out


def received_notification(
    mail: JsonObject, receipt: JsonObject, content: str | None = None
) -> JsonObject:
    """The `Received` notification; `content` only for the SNS action."""
    out: JsonObject = {"notificationType": "Received", "mail": mail, "receipt": receipt}
    if content is not None:
        out["content"] = content
    return out


def encode_content(raw: bytes, encoding: Literal["utf-8", "base64"]) -> str:
    """The notification's `content`: UTF-8 text (invalid bytes replaced) or base64 of the bytes."""
    if encoding == "base64":
        return base64.b64encode(raw).decode("ascii")
    return raw.decode("utf-8", "replace")


def lambda_event(mail: JsonObject, receipt: JsonObject) -> JsonObject:
    """The event a Lambda action invokes its function with: one record, no `content`."""
    record = {
        "eventSource": "aws:ses",
        "eventVersion": "1.0",
        "ses": {"mail": mail, "receipt": receipt},
    }
    return {"Records": [record]}


def sns_envelope(
    *, topic_arn: str, message: JsonObject, sns_message_id: str, timestamp: datetime
) -> JsonObject:
    """The SNS `Notification` envelope around `message` (without SNS's signature fields)."""
    return {
        "Type": "Notification",
        "MessageId": sns_message_id,
        "TopicArn": topic_arn,
        "Subject": SNS_SUBJECT,
        # SES publishes compact JSON and keeps non-ASCII text as is.
        "Message": json.dumps(message, separators=(",", ":"), ensure_ascii=False),
        "Timestamp": ses_timestamp(timestamp),
    }


def _header_list(headers: Sequence[Header]) -> tuple[list[dict[str, str]], bool]:
    """[{name, value}] in message order until the next header would pass the 10 KB budget."""
    out: list[dict[str, str]] = []
    used = 0
    for header in headers:
        size = len(header.name.encode()) + len(header.value.encode())
        if used + size > HEADERS_BUDGET:
            return out, True
        used += size
        out.append({"name": header.name, "value": header.value})
    return out, False


def _common_headers(headers: Sequence[Header]) -> JsonObject:
    out: JsonObject = {}
    for key, name, is_list in _COMMON_HEADERS:
        found = [header for header in headers if header.name.lower() == name]
        if not found:
            continue
        if is_list:
            # Every occurrence, each split into the addresses as written (display names kept).
            out[key] = [entry for header in found for entry in split_addresses(header.value)]
        elif key == "returnPath":
            out[key] = _strip_angles(found[0].value)
        elif key == "subject":
            # RFC 2047 decoded, as a mail reader shows it (SES's docs do not say either way).
            out[key] = found[0].decoded
        else:
            out[key] = found[0].value
    return out


def split_addresses(value: str) -> list[str]:
    """An address list split on commas outside quotes, comments, angle brackets and groups.

    Each entry is kept as written (display name, comments), stripped of surrounding space.
    """
    entries, group_open = _split(value, groups=True)
    if group_open:  # a stray ":" without its ";" is not a group (RFC 5322 §3.4)
        entries, _ = _split(value, groups=False)
    return [entry.strip() for entry in entries if entry.strip()]


def _split(value: str, *, groups: bool) -> tuple[list[str], bool]:
    entries: list[str] = []
    current: list[str] = []
    quoted = escaped = in_group = False
    comment_depth = angle_depth = 0
    for char in value:
        top = not quoted and not comment_depth and not angle_depth
        if escaped:
            escaped = False
        elif char == "\\" and (quoted or comment_depth):
            escaped = True
        elif quoted:
            quoted = char != '"'
        elif char == "(":
            comment_depth += 1
        elif comment_depth:
            comment_depth -= char == ")"
        elif char == '"':
            quoted = True
        elif char == "<":
            angle_depth += 1
        elif char == ">" and angle_depth:
            angle_depth -= 1
        elif top and groups and char == ":" and not in_group:
            in_group = True
        elif top and groups and char == ";" and in_group:
            in_group = False
        elif top and char == "," and not in_group:
            entries.append("".join(current))
            current = []
            continue
        current.append(char)
    entries.append("".join(current))
    return entries, in_group


def _strip_angles(value: str) -> str:
    text = value.strip()
    if text.startswith("<"):
        end = text.find(">")
        return text[1:end] if end > 0 else text[1:]
    return text
