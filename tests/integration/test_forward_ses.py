"""`forward` with `via: ses` (SPEC section 3b) on `--targets aws` against a moto server: SES v2
SendEmail with Content.Raw gets the rewritten message, and moto's record of sent mail shows it;
a From that is not a verified identity is refused (MessageRejected), a permanent failure.

The moto server is this test's own: its sent-mail record is read from `/moto-api/data.json`,
which lists every model of the server and fails on the long-lived shared server's state."""

from __future__ import annotations

import contextlib
import json
import signal
import smtplib
import subprocess
import uuid
from collections.abc import Iterator
from email import message_from_string
from email.utils import getaddresses
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.integration.daemons import moto_request, own_moto
from tests.integration.receiver import DEADLINE, Child, events_of, start_child, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RULES = """\
version: 1
name: ses-forwarder
domains: [fwd.chain.test]
rules:
  - name: rewrite
    recipients: [team@fwd.chain.test]
    actions:
      - {type: forward, to: [team@dest.test], via: ses, from_address: forwarder@fwd.chain.test}
  - name: preserve
    recipients: [keep@fwd.chain.test]
    actions:
      - {type: forward, to: [keep@dest.test], via: ses, from_mode: preserve}
"""


def aws_env(endpoint: str, tmp_path: Path) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
    }


@pytest.fixture
def moto_endpoint() -> Iterator[str]:
    yield from own_moto(lambda_simple=False)


def sent_raw_messages(endpoint: str) -> list[dict[str, Any]]:
    """moto's record of the raw messages SES was asked to send."""
    data = json.loads(moto_request(endpoint, "/moto-api/data.json"))
    return list(data.get("ses", {}).get("RawMessage", []))


def send(port: int, mail_from: str, rcpt: str, message: bytes) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=DEADLINE) as client:
        client.ehlo("client.test")
        client.mail(mail_from)
        client.rcpt(rcpt)
        code, text = client.data(message)
        assert code == 250, text
        return text.decode().rsplit(" ", 1)[-1]


def test_via_ses_sends_the_rewritten_message_and_an_unverified_from_fails_for_good(
    tmp_path: Path, moto_endpoint: str
) -> None:
    env = aws_env(moto_endpoint, tmp_path)
    ses = boto3.client(
        "sesv2",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    ses.create_email_identity(EmailIdentity="fwd.chain.test")  # verified at once in moto
    (tmp_path / "rules.yaml").write_text(RULES)
    child: Child = start_child(tmp_path, "--targets", "aws", env=env)
    try:
        unique = f"<{uuid.uuid4().hex}@sender.test>"
        message = (
            f"From: Alice <alice@sender.test>\r\nTo: team@fwd.chain.test\r\n"
            f"Subject: via SES\r\nMessage-ID: {unique}\r\n\r\nHello SES.\r\n"
        ).encode()
        forwarded = send(child.port, "alice@sender.test", "team@fwd.chain.test", message)
        kept = send(child.port, "alice@sender.test", "keep@fwd.chain.test", message)

        def ours() -> list[dict[str, Any]]:
            return [m for m in sent_raw_messages(moto_endpoint) if unique in m["raw_data"]]

        (record,) = wait_for(ours, "moto's record of the forward")
        sent = message_from_string(record["raw_data"])
        assert getaddresses([sent["From"]]) == [
            ("Alice via fwd.chain.test", "forwarder@fwd.chain.test")
        ]
        assert getaddresses([sent["Reply-To"]]) == [("Alice", "alice@sender.test")]
        assert sent["X-Original-To"] == "team@fwd.chain.test"
        assert "team@dest.test" in record["destinations"]
        # moto keeps the record before SendEmail answers, so the log line may come later.
        wait_for(lambda: events_of(child, "action.succeeded", forwarded), "the forward's success")

        failed = wait_for(lambda: events_of(child, "action.failed", kept), "the refused forward")
        assert failed[0]["transient"] is False
        assert "MessageRejected" in failed[0]["error"]
        assert "alice@sender.test" in failed[0]["error"]
        dead = child.data_dir / "spool" / "dead" / kept
        wait_for(dead.is_dir, "the refused forward dead-lettered")
        assert len(ours()) == 1  # the preserved one never went out
    finally:
        child.signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(DEADLINE)
        if child.process.poll() is None:
            child.kill()
