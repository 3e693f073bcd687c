"""The `parsed` webhook payload (SPEC section 3b): `parse_for_webhook`, then `render_parsed`.

This module owns the payload's JSON shape and where its attachments go: inline as base64 up to
`max_inline_bytes`, else stored through an `AttachmentStore` (the blob service and the
action's `attachments_bucket`) and sent as a URL, else left out with a note. Reading the
message is `inbound.message.bodies`' business (re-exported here: this is the one module the
webhook action imports).

Every attachment object has exactly one of `content` (base64), `url` or `omitted` (why
neither: "attachments: omit", or no bucket to store it in), and `error` only when the part
could not be decoded and is sent as received (`bodies.PartError`). Stored attachments are at
`MESSAGEID/N-NAME` (N the attachment's index in `attachments`, NAME its filename made safe for
a key): deterministic, so a retry overwrites what an earlier attempt stored.
"""

from __future__ import annotations

import base64
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from inbound.core.services import BlobStore
from inbound.message.bodies import (
    Mailbox,
    ParsedAttachment,
    ParsedMessage,
    PartError,
    parse_for_webhook,
)

__all__ = [
    "URL_SECONDS",
    "AttachmentMode",
    "AttachmentStore",
    "Mailbox",
    "ParsedAttachment",
    "ParsedMessage",
    "PartError",
    "attachment_key",
    "parse_for_webhook",
    "render_parsed",
]

AttachmentMode = Literal["inline", "url", "omit"]
# 7 days: the longest an S3 presigned URL (SigV4) may live.
URL_SECONDS = 7 * 24 * 3600
# What a key's file name keeps: S3's "safe characters" for object keys, at most this long.
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_KEY_NAME = 100
# type/subtype in RFC 6838 section 4.2's characters, as an attachment's URL may serve it.
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")


@dataclass(frozen=True, slots=True)
class AttachmentStore:
    """Where attachments that are not inlined go: `bucket` of a blob service, read back
    through URLs valid for `expires_in` seconds (a presigned S3 GET, a file:// URL locally)."""

    blobs: BlobStore
    bucket: str
    expires_in: int = URL_SECONDS

    async def put(self, key: str, content: bytes, content_type: str) -> str:
        """Store `content` at `key` and return the URL it can be fetched from, which serves
        it as `content_type` (application/octet-stream unless that is a plain media type)."""
        if not _MEDIA_TYPE.fullmatch(content_type):
            content_type = "application/octet-stream"  # the sender's text, unfit for a header
        await self.blobs.store(
            self.bucket,
            key,
            content,
            kms_key_arn=None,
            iam_role_arn=None,
            content_type=content_type,
        )
        return await self.blobs.url(self.bucket, key, expires_in=self.expires_in)


async def render_parsed(
    parsed: ParsedMessage,
    *,
    message_id: str,
    timestamp: str,
    rule: str,
    mail_from: str,
    rcpt_to: Sequence[str],
    verdicts: Mapping[str, str],
    dmarc_policy: str | None,
    attachments: AttachmentMode,
    max_inline_bytes: int,
    store: AttachmentStore | None,
) -> dict[str, object]:
    """The `parsed` JSON object of SPEC section 3b; raises only what `store` raises (an
    `ActionError`: the action is retried, and stores the same keys again)."""
    rendered = [
        await _attachment(
            index,
            attachment,
            message_id=message_id,
            mode=attachments,
            max_inline_bytes=max_inline_bytes,
            store=store,
        )
        for index, attachment in enumerate(parsed.attachments)
    ]
    return {
        "id": message_id,
        "timestamp": timestamp,
        "rule": rule,
        "envelope": {"mail_from": mail_from, "rcpt_to": list(rcpt_to)},
        "from": _mailbox(parsed.from_) if parsed.from_ is not None else None,
        "to": [_mailbox(m) for m in parsed.to],
        "cc": [_mailbox(m) for m in parsed.cc],
        "reply_to": [_mailbox(m) for m in parsed.reply_to],
        "subject": parsed.subject,
        "date": parsed.date,
        "message_id": parsed.message_id,
        "in_reply_to": parsed.in_reply_to,
        "references": list(parsed.references),
        "headers": [{"name": h.name, "value": h.decoded} for h in parsed.headers],
        "text": parsed.text,
        "html": parsed.html,
        "attachments": rendered,
        "verdicts": dict(verdicts),
        "dmarc_policy": dmarc_policy,
    }


def attachment_key(message_id: str, index: int, filename: str | None) -> str:
    """`MESSAGEID/N-NAME`: NAME is the filename in S3's safe characters (accents dropped,
    anything else a "_"), "attachment" when nothing is left."""
    ascii_name = unicodedata.normalize("NFKD", filename or "").encode("ascii", "ignore")
    name = _UNSAFE.sub("_", ascii_name.decode("ascii")).strip("._")[-MAX_KEY_NAME:]
    return f"{message_id}/{index}-{name or 'attachment'}"


def _mailbox(mailbox: Mailbox) -> dict[str, object]:
    return {"name": mailbox.name, "address": mailbox.address}


async def _attachment(
    index: int,
    attachment: ParsedAttachment,
    *,
    message_id: str,
    mode: AttachmentMode,
    max_inline_bytes: int,
    store: AttachmentStore | None,
) -> dict[str, object]:
    entry: dict[str, object] = {
        "filename": attachment.filename,
        "content_type": attachment.content_type,
        "size": attachment.size,
        "sha256": attachment.sha256,
        "content_id": attachment.content_id,
    }
    if attachment.error is not None:
        entry["error"] = attachment.error
    if mode == "omit":
        entry["omitted"] = "attachments: omit"
    elif mode == "inline" and attachment.size <= max_inline_bytes:
        entry["content"] = base64.b64encode(attachment.content).decode("ascii")
    elif store is None:
        why = "attachments: url" if mode == "url" else f"larger than {max_inline_bytes} bytes"
        entry["omitted"] = f"{why}, and no attachments_bucket to store it in"
    else:
        key = attachment_key(message_id, index, attachment.filename)
        entry["url"] = await store.put(key, attachment.content, attachment.content_type)
    return entry
