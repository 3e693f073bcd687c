"""A request_response function's disposition at every entry point (SPEC section 2): anything but
STOP_RULE / STOP_RULE_SET continues, "__pause__" included (it once made the step loop spin
forever without yielding: `inbound serve` stopped answering SMTP, the SES handler never
returned). Each entry point runs the function, then the action after it."""

from __future__ import annotations

import json
import smtplib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from inbound.cli.main import main
from inbound.ses.consume import Consumer
from inbound.ses.handler import lambda_handler
from tests.conftest import FIXTURES
from tests.integration.receiver import in_process, settings_for, wait_for
from tests.integration.test_aws_targets import make_function, queue_lambda_results
from tests.integration.test_ses_consume import envelope, queue, send, stored_notification
from tests.integration.test_ses_handler import (
    bucket,
    get,
    keys,
    rules,
    ses_event,
    stored_message,
    unique,
)
from tests.integration.test_smtp import Raw

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

# What the function answers as its disposition; each continues.
ANSWERS: dict[str, object] = {"pause": "__pause__", "empty": "", "number": 42, "null": None}
DEADLINE = 20.0
CALLS: list[str] = []  # the in-process functions below append their name ...
RELEASE = threading.Event()  # ... and answer once the test sets this
RETURNED = threading.Event()


def _answering(name: str) -> Callable[[dict[str, Any], object], dict[str, object]]:
    def function(event: dict[str, Any], context: object) -> dict[str, object]:
        CALLS.append(name)
        RELEASE.wait(DEADLINE)
        RETURNED.set()
        return {"disposition": ANSWERS[name]}

    return function


answer_pause = _answering("pause")
answer_empty = _answering("empty")
answer_number = _answering("number")
answer_null = _answering("null")


def finished(run: Callable[[], object], what: str) -> object:
    """Run `run` in a thread; fail (rather than hang the test) if it does not return."""
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(run()), daemon=True)
    thread.start()
    thread.join(DEADLINE)
    assert not thread.is_alive(), f"{what} did not return within {DEADLINE}s"
    return result[0] if result else None


def assert_answers_smtp(port: int) -> None:
    raw = Raw(port)
    raw.sock.settimeout(5)
    try:
        assert raw.reply().startswith("220 ")
        assert raw.command("EHLO client.test").startswith("250")
        assert raw.command("NOOP").startswith("250")
    finally:
        raw.close()


SERVE_RULES = """\
version: 1
name: test
domains: [example.com]
rules:
  - name: ask
    recipients: [example.com]
    actions:
      - {type: lambda, function_arn: "arn:aws:lambda:us-east-1:123456789012:function:ask",
         invocation_type: request_response}
      - {type: s3, bucket: mail, prefix: in/}
"""


@pytest.mark.parametrize("answer", list(ANSWERS))
def test_serve_continues_and_keeps_answering_smtp(tmp_path: Path, answer: str) -> None:
    CALLS.clear()
    RELEASE.clear()
    RETURNED.clear()
    settings = settings_for(tmp_path, SERVE_RULES, lambdas={"ask": f"{__name__}:answer_{answer}"})
    with in_process(settings) as running:
        with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as client:
            client.sendmail("a@sender.test", ["user@example.com"], b"Subject: hi\r\n\r\nhi\r\n")
        wait_for(lambda: CALLS, "the function to be called")
        # The dispatcher shares the event loop with the SMTP sessions: they are answered while
        # the function runs, and after it answered (once the point where the loop spun).
        assert_answers_smtp(running.port)
        RELEASE.set()
        assert RETURNED.wait(DEADLINE)
        assert_answers_smtp(running.port)
        stored = running.wait_stored(1)
        assert len(stored) == 1, "the s3 action after the function did not run"
        running.wait_idle()
        assert running.queued() == []
    assert [answer] == CALLS


def _lambda_rules(function_arn: str, out: str) -> str:
    return f"""\
version: 1
name: ses
domains: [example.com]
rules:
  - name: ask
    actions:
      - {{type: lambda, function_arn: "{function_arn}", invocation_type: request_response}}
      - {{type: s3, bucket: {out}, prefix: out/}}
"""


@pytest.mark.parametrize("answer", list(ANSWERS))
def test_lambda_handler_continues(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: str
) -> None:
    message_id = unique("ask")
    source = stored_message(message_id)
    monkeypatch.setenv("INBOUND_SES_BUCKET", source)
    monkeypatch.setenv("INBOUND_SES_PREFIX", "incoming/")
    out = bucket()
    rules(tmp_path, monkeypatch, _lambda_rules(make_function(), out))
    queue_lambda_results(aws, json.dumps({"disposition": ANSWERS[answer]}))

    result = finished(lambda: lambda_handler(ses_event(message_id), None), "the handler")

    assert result == {"disposition": "CONTINUE"}
    assert keys(out) == [f"out/{message_id}"]


@pytest.mark.parametrize("answer", list(ANSWERS))
def test_ses_consume_continues(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: str
) -> None:
    out = bucket()
    path = tmp_path / "rules.yaml"
    path.write_text(_lambda_rules(make_function(), out))
    monkeypatch.setenv("INBOUND_RULES", str(path))
    notification = stored_notification()
    url = queue()
    send(url, envelope(notification))
    queue_lambda_results(aws, json.dumps({"disposition": ANSWERS[answer]}))

    consumer = Consumer(url, wait=1, visibility=30, max_messages=1)
    stats = finished(consumer.run, "ses consume")

    assert stats is consumer.stats
    assert (consumer.stats.succeeded, consumer.stats.failed) == (1, 0)
    message_id = notification["mail"]["messageId"]
    assert get(out, f"out/{message_id}")


@pytest.mark.parametrize("answer", ["__pause__", "", "42", "null"])
def test_evaluate_continues(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], answer: str
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(SERVE_RULES)
    eml = FIXTURES / "corpus" / "ses" / "lambda-event__ses-forwarder__message.eml"
    code = main(
        [
            "evaluate",
            "--rules",
            str(path),
            "--eml",
            str(eml),
            "--rcpt",
            "user@example.com",
            "--lambda-result",
            f"ask={answer}",
            "--json",
        ]
    )
    assert code == 0
    plan = json.loads(capsys.readouterr().out)
    (rule,) = plan["rules"]
    assert [a["type"] for a in rule["actions"]] == ["Lambda", "S3"]
    assert rule["stop"] is None
