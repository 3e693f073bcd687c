"""The step journal across a real SIGKILL (SPEC section 7, issue 13): a message's first action
succeeded and its second was running when the process was killed; after the restart the first
is not repeated, `inbound spool show` lists it as succeeded, and a torn journal tail left by
the kill is ignored."""

from __future__ import annotations

import json
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration import flaky_functions
from tests.integration.receiver import (
    DEADLINE,
    ROOT,
    Child,
    events_of,
    log_events,
    start_child,
    wait_for,
)

pytestmark = pytest.mark.integration

FUNCTIONS = "tests.integration.flaky_functions"
ARN = "arn:aws:lambda:us-east-1:123456789012:function:{}"
RULES = f"""\
version: 1
name: journal
domains: [example.com]
rules:
  - name: three
    actions:
      - {{type: lambda, function_arn: "{ARN.format("counted")}", invocation_type: request_response}}
      - {{type: lambda, function_arn: "{ARN.format("held")}", invocation_type: request_response}}
      - {{type: s3, bucket: mail, prefix: in/}}
"""
LAMBDAS = (
    "--lambda",
    f"counted={FUNCTIONS}:count_and_continue",
    "--lambda",
    f"held={FUNCTIONS}:wait_for_flag",
)


def send(port: int) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("alice@sender.example")
        client.rcpt("bob@example.com")
        code, text = client.data(b"From: alice@sender.example\r\nSubject: j\r\n\r\nBody.\r\n")
    assert code == 250, text
    return text.decode().rsplit(" ", 1)[-1]


def show(child: Child, message_id: str) -> dict[str, object]:
    spool = ("spool", "--data-dir", str(child.data_dir))
    shown = subprocess.run(
        [sys.executable, "-m", "inbound", *spool, "show", message_id, "--json"],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        cwd=ROOT,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    dispatch: dict[str, object] = json.loads(shown.stdout)["dispatch"]
    return dispatch


def test_sigkill_between_two_actions_does_not_repeat_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()
    monkeypatch.setenv(flaky_functions.ENV, str(calls))
    (tmp_path / "rules.yaml").write_text(RULES)
    child = start_child(tmp_path, *LAMBDAS)
    try:
        message_id = send(child.port)
        # The second action runs: the first one's success was recorded before it started.
        wait_for(
            lambda: flaky_functions.calls(calls, "wait_for_flag", message_id) == 1,
            "the second action to start",
        )
        # ... in the step journal, not in a state file of the message's own.
        assert not list((child.data_dir / "spool").glob(f"*/{message_id}/state.json"))
        child.kill()
    finally:
        if child.process.poll() is None:
            child.kill()

    steps = show(child, message_id)["steps"]
    first = {"outcome": "succeeded", "attempts": 1, "last_error": None, "result": "CONTINUE"}
    assert steps == {"0:0": first}
    # A kill in the middle of the next append leaves a torn record: it is ignored.
    with (child.data_dir / "spool" / "steps.journal").open("ab") as journal:
        journal.write(b'0badf00d {"m":"' + message_id.encode())
    assert show(child, message_id)["steps"] == steps

    (calls / flaky_functions.SUCCEED_FLAG).touch()
    child = start_child(tmp_path, *LAMBDAS)
    try:
        wait_for(lambda: events_of(child, "message.dispatched", message_id), "message.dispatched")
        assert flaky_functions.calls(calls, "count_and_continue", message_id) == 1
        assert flaky_functions.calls(calls, "wait_for_flag", message_id) == 2
        assert (child.data_dir / "s3" / "mail" / "in" / message_id).is_file()
        trail = [
            (e["event"], e["action"], e["attempt"])
            for e in log_events(child.log)
            if e.get("message_id") == message_id and e["event"].startswith("action.")
        ]
        assert trail == [("action.succeeded", "Lambda", 1), ("action.succeeded", "S3", 1)]
    finally:
        child.kill()
