"""Webhooks for mail that SES received: the Lambda handler and `inbound ses consume` post a
stored message's webhook (moto server for S3 and SQS, a real HTTP(S) server on loopback),
once per message however often SES delivers the event (SPEC sections 3b and 8)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from inbound.core.errors import TransientActionError
from inbound.ses.consume import Consumer
from inbound.ses.handler import lambda_handler
from inbound.tls import self_signed_context
from tests.integration.test_ses_consume import envelope, queue, send, stored_notification
from tests.integration.test_ses_handler import RAW, ses_event, stored_message, unique
from tests.integration.test_webhook_delivery import SECRET
from tests.integration.webhook_server import Answer, webhook_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def webhook_rules(tmp_path: Path, url: str, fmt: str = "ses") -> Path:
    path = tmp_path / f"{unique('rules')}.yaml"
    path.write_text(
        f"""\
version: 1
name: ses
domains: [example.com]
rules:
  - name: app
    actions:
      - {{type: webhook, url: "{url}", format: {fmt}, secret_env: TEST_WEBHOOK_SECRET}}
"""
    )
    return path


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)


def test_the_lambda_handler_posts_a_stored_message_once(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_id = unique("msg")
    monkeypatch.setenv("INBOUND_SES_BUCKET", stored_message(message_id))
    monkeypatch.setenv("INBOUND_SES_PREFIX", "incoming/")
    event = ses_event(message_id, "user@example.com")
    with webhook_server() as hook:
        monkeypatch.setenv("INBOUND_RULES", str(webhook_rules(tmp_path, hook.url(), "raw")))
        hook.answer(Answer(503))
        with pytest.raises(TransientActionError, match="503"):
            lambda_handler(event, None)  # the invocation fails: SES delivers the event again
        assert lambda_handler(event, None) == {"disposition": "CONTINUE"}
        assert lambda_handler(event, None) == {"disposition": "CONTINUE"}  # a redelivery
        first, second = hook.wait(2)
        assert len(hook.requests()) == 2
    assert second.body == RAW  # SES's bytes as stored: nothing prepended a second time
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == f"{message_id}-0-0"
    Webhook(SECRET).verify(second.body, second.headers, json_parse=False)


def test_ses_consume_posts_over_https_trusting_inbound_webhook_ca(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    self_signed_context(tmp_path / "tls", "hook.test")
    cert, key = tmp_path / "tls" / "self-signed.crt", tmp_path / "tls" / "self-signed.key"
    monkeypatch.setenv("INBOUND_WEBHOOK_CA", str(cert))
    notification = stored_notification()
    url = queue()
    send(url, envelope(notification))
    with webhook_server(tls=(cert, key)) as hook:
        monkeypatch.setenv("INBOUND_RULES", str(webhook_rules(tmp_path, hook.url())))
        stats = Consumer(url, wait=1, visibility=1, max_messages=1).run()
        (request,) = hook.wait(1)
    assert (stats.succeeded, stats.failed) == (1, 0)
    posted = Webhook(SECRET).verify(request.body, request.headers)
    assert posted["mail"]["messageId"] == notification["mail"]["messageId"]
    assert posted["receipt"]["action"]["type"] == "Webhook"
    assert posted["content"].encode() == RAW or posted["receipt"]["action"]["encoding"] == "BASE64"
    assert (
        json.loads(request.body)["receipt"]["recipients"] == notification["receipt"]["recipients"]
    )
