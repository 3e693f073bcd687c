"""Webhooks when things go wrong: the endpoint down across a SIGKILL of `inbound serve`, TLS
verification (`--webhook-ca`), and the secret kept out of the logs (SPEC sections 3b, 7)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from inbound.tls import self_signed_context
from tests.integration.receiver import Child, in_process, settings_for, start_child, wait_for
from tests.integration.test_webhook_delivery import FAST, SECRET, queued_id, rules
from tests.integration.webhook_server import Answer, free_port, webhook_server

pytestmark = pytest.mark.integration

RETRY_FLAGS = ("--retry-delay", "0.2s", "--max-retry-delay", "0.5s")


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)


def state_of(data_dir: Path, message_id: str) -> dict[str, object]:
    path = data_dir / "spool" / "queue" / message_id / "state.json"
    try:
        loaded: dict[str, object] = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return loaded


def failed_with(data_dir: Path, message_id: str, words: str) -> bool:
    return words in str(state_of(data_dir, message_id).get("last_error") or "")


def test_endpoint_down_then_back_across_a_sigkill_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hooks/mail"
    (tmp_path / "rules.yaml").write_text(rules(url))
    first: Child | None = start_child(tmp_path, *RETRY_FLAGS)
    assert first is not None
    try:
        message_id = queued_id(first.port)
        wait_for(
            lambda: failed_with(first.data_dir, message_id, "connection refused"),
            "a refused attempt recorded",
        )
        first.signal(signal.SIGKILL)
        first.process.wait(20)
    finally:
        if first.process.poll() is None:
            first.kill()
    with webhook_server(port=port) as hook:
        second = start_child(tmp_path, *RETRY_FLAGS)
        try:
            requests = hook.wait(1)
            wait_for(
                lambda: not (second.data_dir / "spool" / "queue" / message_id).exists(), "done"
            )
        finally:
            second.signal(signal.SIGTERM)
            second.process.wait(20)
        assert len(hook.requests()) == 1
    (request,) = requests
    assert request.headers["webhook-id"] == f"{message_id}-0-0"
    Webhook(SECRET).verify(request.body, request.headers, json_parse=False)
    # The secret (and its key) never reached a log line, whatever happened.
    key = SECRET.removeprefix("whsec_")
    for log in tmp_path.glob("serve-*.log"):
        text = log.read_text()
        assert "action.failed" in text or "message.dispatched" in text
        assert key not in text
        assert SECRET not in text


def test_a_self_signed_endpoint_is_refused_by_default_and_trusted_with_webhook_ca(
    tmp_path: Path,
) -> None:
    self_signed_context(tmp_path / "tls", "hook.test")
    cert, key = tmp_path / "tls" / "self-signed.crt", tmp_path / "tls" / "self-signed.key"
    with webhook_server(tls=(cert, key)) as hook:
        text = rules(hook.url())
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        with in_process(settings_for(tmp_path / "a", text, retry=FAST)) as running:
            refused = queued_id(running.port)
            wait_for(
                lambda: failed_with(running.data_dir, refused, "certificate verify failed"),
                "an attempt refused for its certificate",
            )
            assert hook.requests() == []
            assert running.queued() == [refused]  # transient: kept for a retry
        trusting = settings_for(tmp_path / "b", text, retry=FAST, webhook_ca=cert)
        with in_process(trusting) as running:
            accepted = queued_id(running.port)
            (request,) = hook.wait(1)
            running.wait_idle()
    assert request.headers["webhook-id"] == f"{accepted}-0-0"


def test_an_unusable_webhook_ca_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(rules("https://127.0.0.1:9/x"))
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(AssertionError, match="exited 2"):
        start_child(tmp_path, "--webhook-ca", str(bad))
    log = next(tmp_path.glob("serve-*.log")).read_text()
    assert f"--webhook-ca {bad}: no PEM CA certificate in it" in log


def test_sigterm_waits_for_a_hung_webhook_only_up_to_its_timeout(tmp_path: Path) -> None:
    """SIGTERM lets the attempt in flight end (inbound.schedule): a webhook that never answers
    ends at its timeout, the process exits 0, and the message is posted after the restart."""
    with webhook_server() as hook:
        hook.answer(Answer(hang=True))
        (tmp_path / "rules.yaml").write_text(rules(hook.url(), timeout="3s"))
        child = start_child(tmp_path, *RETRY_FLAGS)
        try:
            message_id = queued_id(child.port)
            hook.wait(1)
            started = time.monotonic()
            child.signal(signal.SIGTERM)
            assert child.process.wait(20) == 0
            assert time.monotonic() - started < 3 + 5
        finally:
            if child.process.poll() is None:
                child.kill()
        assert (child.data_dir / "spool" / "queue" / message_id).is_dir()
        again = start_child(tmp_path, *RETRY_FLAGS)
        try:
            second = hook.wait(2)[1]
            wait_for(lambda: not (again.data_dir / "spool" / "queue" / message_id).exists(), "done")
        finally:
            again.signal(signal.SIGTERM)
            again.process.wait(20)
    assert second.headers["webhook-id"] == f"{message_id}-0-0"
