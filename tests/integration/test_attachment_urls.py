"""Webhook attachments over `max_inline_bytes` stored through the blob service and announced by
URL (SPEC section 3b): a presigned GET on a real moto server's S3, a file:// URL locally; what
the URL serves has the SHA-256 the payload announces."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import stat
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import boto3
import pytest

from inbound.core.ids import MessageIdGenerator
from inbound.core.message import MimeLimits
from inbound.message.parsed import (
    URL_SECONDS,
    AttachmentStore,
    parse_for_webhook,
    render_parsed,
)
from inbound.targets.aws import AwsTargets
from inbound.targets.local import LocalTargets

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

MB = 1024 * 1024


def message_with(attachment: bytes, filename: str) -> bytes:
    encoded = base64.encodebytes(attachment).replace(b"\n", b"\r\n")
    return (
        b"From: Ana <ana@example.com>\r\nTo: ops@example.net\r\nSubject: the scan\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe scan is attached.\r\n"
        b"--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="' + filename.encode() + b'"\r\n\r\n'
        + encoded + b"--b--\r\n"
    )  # fmt: skip


def payload_for(raw: bytes, message_id: str, store: AttachmentStore) -> dict[str, object]:
    return asyncio.run(
        render_parsed(
            parse_for_webhook(raw, limits=MimeLimits()),
            message_id=message_id,
            timestamp="2026-12-06T13:00:00.000Z",
            rule="webhooks",
            mail_from="ana@example.com",
            rcpt_to=["ops@example.net"],
            verdicts={},
            dmarc_policy=None,
            attachments="inline",
            max_inline_bytes=1 * MB,
            store=store,
        )
    )


def only_attachment(payload: dict[str, object]) -> dict[str, object]:
    attachments = payload["attachments"]
    assert isinstance(attachments, list)
    assert len(attachments) == 1
    found: dict[str, object] = attachments[0]
    return found


def test_a_5_mb_attachment_is_stored_on_s3_and_its_presigned_url_serves_it(aws: str) -> None:
    bucket = f"attachments-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    content = os.urandom(5 * MB)
    message_id = MessageIdGenerator().next()
    raw = message_with(content, "scan 2026.pdf")

    attachment = only_attachment(
        payload_for(raw, message_id, AttachmentStore(AwsTargets(), bucket))
    )

    assert "content" not in attachment
    assert attachment["size"] == 5 * MB
    assert attachment["sha256"] == hashlib.sha256(content).hexdigest()
    url = str(attachment["url"])
    assert url.startswith(aws + "/")  # the configured endpoint, not s3.amazonaws.com
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == [str(URL_SECONDS)]
    assert urllib.parse.unquote(urllib.parse.urlsplit(url).path).endswith(
        f"/{message_id}/0-scan_2026.pdf"
    )
    # A plain GET, no credentials: what the application does with the URL.
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - moto on loopback
        served = response.read()
        served_as = response.headers["Content-Type"]
    assert hashlib.sha256(served).hexdigest() == attachment["sha256"]
    assert served_as == attachment["content_type"] == "application/pdf"


def test_locally_the_file_url_names_a_private_file_with_the_announced_bytes(tmp_path: Path) -> None:
    content = os.urandom(3 * MB)
    message_id = MessageIdGenerator().next()
    store = AttachmentStore(LocalTargets(tmp_path / "data"), "mail-attachments")

    attachment = only_attachment(payload_for(message_with(content, "ciële.pdf"), message_id, store))

    url = str(attachment["url"])
    assert url.startswith("file:///")
    path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
    expected = tmp_path / "data" / "s3" / "mail-attachments" / message_id / "0-ciele.pdf"
    assert path == expected.resolve()
    with urllib.request.urlopen(url) as response:  # noqa: S310 - the file: URL under test
        served = response.read()
    assert hashlib.sha256(served).hexdigest() == attachment["sha256"]
    assert served == content
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
