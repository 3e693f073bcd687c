"""`inbound spool list|show|delete|purge` against a data directory a real receiver filled.

A first `inbound serve` (retrying for 1 s) dead-letters one message; a second (retrying in an
hour) defers two and is still dispatching a third (its Lambda holds until released). The
commands run as a user runs them, in a subprocess, while that server runs and after it stopped.
"""

from __future__ import annotations

import json
import re
import signal
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration import flaky_functions, spool_functions
from tests.integration.receiver import DEADLINE, ROOT, Child, events_of, start_child, wait_for

pytestmark = pytest.mark.integration

QUEUED_AS = re.compile(r"queued as ([0-9a-z]{40})")
FLAKY = "tests.integration.flaky_functions"
HOLDING = "tests.integration.spool_functions"


def _arn(name: str) -> str:
    return f"arn:aws:lambda:us-east-1:123456789012:function:{name}"


RULES = f"""\
version: 1
name: spool-cli
domains: [example.com]
rules:
  - name: later
    recipients: [later@example.com]
    actions:
      - {{type: s3, bucket: mail, prefix: later/}}
      - {{type: lambda, function_arn: "{_arn("gate")}", invocation_type: request_response}}
      - {{type: sns, topic_arn: "arn:aws:sns:us-east-1:123456789012:later"}}
  - name: doomed
    recipients: [doomed@example.com]
    actions:
      - {{type: s3, bucket: mail, prefix: doomed/}}
      - {{type: lambda, function_arn: "{_arn("gate")}", invocation_type: request_response}}
      - {{type: s3, bucket: mail, prefix: doomed-after/}}
  - name: held
    recipients: [held@example.com]
    actions:
      - {{type: lambda, function_arn: "{_arn("hold")}", invocation_type: event}}
"""
LAMBDAS = ("--lambda", f"gate={FLAKY}:fail_until_flag", "--lambda", f"hold={HOLDING}:hold")


def send(port: int, rcpt: str, token: str) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.mail("alice@sender.example")[0] == 250
        assert client.rcpt(rcpt)[0] == 250
        body = f"From: alice@sender.example\r\nTo: {rcpt}\r\nSubject: {token}\r\n\r\n{token}\r\n"
        code, text = client.data(body.encode())
        assert code == 250, text
    match = QUEUED_AS.search(text.decode())
    assert match, text
    return match.group(1)


def spool(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inbound", "spool", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        cwd=ROOT,
        check=False,
    )


def stop(child: Child) -> None:
    child.signal(signal.SIGTERM)
    assert child.process.wait(DEADLINE) == 0, child.log.read_text()


@dataclass
class Filled:
    child: Child  # still running: `held` is being dispatched
    calls: Path
    dead: str  # doomed: S3 done, the Lambda failed until the retries expired
    deferred: tuple[str, str]  # later: S3 done, the Lambda failed, due in an hour
    held: str  # its Lambda is running


@pytest.fixture
def filled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Filled]:
    calls = tmp_path / "calls"
    calls.mkdir()
    monkeypatch.setenv(flaky_functions.ENV, str(calls))
    (tmp_path / "rules.yaml").write_text(RULES)
    first = start_child(tmp_path, *LAMBDAS, "--max-retry-age", "1s", "--retry-delay", "0.2s")
    children = [first]
    try:
        dead = send(first.port, "doomed@example.com", "doomed-token")
        wait_for(lambda: events_of(first, "message.dead_lettered", dead), "a dead letter")
        stop(first)
        child = start_child(tmp_path, *LAMBDAS, "--retry-delay", "1h")
        children.append(child)
        deferred = tuple(send(child.port, "later@example.com", f"later-{i}") for i in (1, 2))
        wait_for(
            lambda: all(events_of(child, "message.deferred", m) for m in deferred), "deferrals"
        )
        held = send(child.port, "held@example.com", "held-token")
        wait_for((calls / spool_functions.HOLDING_FLAG).exists, "the held Lambda running")
        yield Filled(child, calls, dead, (deferred[0], deferred[1]), held)
    finally:
        (calls / spool_functions.RELEASE_FLAG).touch()
        for c in children:
            if c.process.poll() is None:
                c.process.kill()
                c.process.wait(DEADLINE)


def test_list_and_show_name_the_steps_what_is_left_the_file_and_the_next_attempt(
    filled: Filled,
) -> None:
    data_dir = filled.child.data_dir
    later = filled.deferred[0]

    listed = spool(data_dir, "list")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[:-1]}
    assert listed.stdout.splitlines()[-1] == "3 queued, 1 dead"
    assert "  deferred  " in rows[later]
    assert "actions: later/S3=succeeded later/Lambda=failed" in rows[later]
    assert "to run: later/Lambda later/SNS  next: " in rows[later]
    assert "last error: function gate failed: FlakyFunctionError" in rows[later]
    assert "  dead  " in rows[filled.dead]
    # Two S3 actions in one rule: each named by its position.
    assert "actions: doomed/S3#1=succeeded doomed/Lambda=failed" in rows[filled.dead]
    assert "to run: doomed/Lambda doomed/S3#3" in rows[filled.dead]
    assert "last error: retries expired: function gate failed" in rows[filled.dead]
    assert "  queued  " in rows[filled.held]
    assert "actions: none yet  to run: held/Lambda" in rows[filled.held]

    entries = {e["message_id"]: e for e in json.loads(spool(data_dir, "list", "--json").stdout)}
    entry = entries[later]
    assert entry["state"] == "deferred"
    assert [(a["step"], a["name"], a["outcome"]) for a in entry["actions"]] == [
        ("0:0", "later/S3", "succeeded"),
        ("0:1", "later/Lambda", "failed"),
    ]
    assert [(s["name"], s["attempts"], s["after"]) for s in entry["to_run"]] == [
        ("later/Lambda", 1, None),
        ("later/SNS", 0, "later/Lambda"),  # runs only if the function answers CONTINUE
    ]
    assert "later-1" in Path(entry["file"]).read_text()
    assert entry["next_attempt_at"] is not None
    assert entries[filled.dead]["state"] == "dead"
    assert entries[filled.dead]["next_attempt_at"] is None
    assert [s["step"] for s in entries[filled.dead]["to_run"]] == ["1:1", "1:2"]

    shown = spool(data_dir, "show", later)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert f"file        {entry['file']}" in lines
    assert "to run      later/Lambda (0:1, failed 1x)" in lines
    assert "            later/SNS (0:2, if later/Lambda answers CONTINUE)" in lines
    assert f"next try    {entry['next_attempt_at']}" in lines
    assert "last error  function gate failed: FlakyFunctionError" in lines
    assert "  succeeded later/S3 (0:0, 1 attempt)" in lines
    dead = spool(data_dir, "show", filled.dead).stdout.splitlines()
    assert f"next try    none: dead-lettered (inbound spool retry {filled.dead})" in dead
    assert "last error  retries expired: function gate failed: FlakyFunctionError" in dead
    held = spool(data_dir, "show", filled.held).stdout.splitlines()
    assert "next try    now" in held

    as_json = json.loads(spool(data_dir, "show", later, "--json").stdout)
    assert {k: as_json[k] for k in entry} == entry
    assert as_json["meta"]["envelope"]["rcpt_tos"] == ["later@example.com"]

    # The rule set it was received with is gone: the steps keep their keys, and `show` says
    # why it cannot tell what is left rather than guess with other rules.
    kept = data_dir / "spool" / "rules"
    aside = data_dir / "rules-aside"
    kept.rename(aside)
    try:
        blind = json.loads(spool(data_dir, "show", later, "--json").stdout)
    finally:
        aside.rename(kept)
    assert [a["name"] for a in blind["actions"]] == ["0:0", "0:1"]
    assert blind["to_run"] is None
    assert blind["to_run_unknown"].startswith("rule set not in the spool: ")

    refused = spool(data_dir, "show", "0" * 40)  # a message ID, but no such message
    assert refused.returncode == 2
    assert refused.stderr == f"inbound spool: no message {'0' * 40} in queue or dead\n"
    assert refused.stdout == ""


def test_delete_and_purge_while_serve_runs_and_after(filled: Filled) -> None:
    data_dir, child = filled.child.data_dir, filled.child
    first, second = filled.deferred

    def ids() -> set[str]:
        """The messages left on disk, but `held` (its Lambda gives up holding after 20 s)."""
        folders = [data_dir / "spool" / "queue", data_dir / "spool" / "dead"]
        return {p.name for f in folders for p in f.iterdir()} - {filled.held}

    # Being dispatched by the running server: left alone, exit 1.
    running = spool(data_dir, "delete", filled.held)
    assert running.returncode == 1
    assert f"{filled.held}: not deleted: it is due now" in running.stderr
    # A bad ID among good ones: exit 2 and nothing is deleted.
    bad = spool(data_dir, "delete", second, "nonsense")
    assert bad.returncode == 2
    assert "nonsense" in bad.stderr
    assert ids() == {first, second, filled.dead}
    # Deferred for an hour: the server will not touch it before it notices it is gone.
    deleted = spool(data_dir, "delete", second)
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout == f"{second}: deleted (deferred)\n"
    assert ids() == {first, filled.dead}

    kept = spool(data_dir, "purge", "--dead", "--older-than", "1h")
    assert kept.stdout == "0 dead letters deleted\n"  # received seconds ago
    dry = spool(data_dir, "purge", "--dry-run")
    assert dry.stdout.splitlines() == [
        f"{filled.dead}: would delete (dead)",
        "1 dead letter would be deleted",
    ]
    assert filled.dead in ids()
    assert spool(data_dir, "purge", "--older-than", "soon").returncode == 2
    purged = spool(data_dir, "purge", "--dead", "--older-than", "0s")
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.splitlines() == [f"{filled.dead}: deleted (dead)", "1 dead letter deleted"]
    assert ids() == {first}

    (filled.calls / spool_functions.RELEASE_FLAG).touch()
    wait_for(lambda: events_of(child, "message.dispatched", filled.held), "held dispatched")
    stop(child)
    unexpected = [e["event"] for e in events_of(child, "message.unreadable")]
    assert unexpected == []
    # No server: a message due now can go (the command holds the data directory meanwhile).
    assert spool(data_dir, "retry", first).returncode == 0
    gone = spool(data_dir, "delete", first)
    assert gone.returncode == 0, gone.stderr
    assert gone.stdout == f"{first}: deleted (queued)\n"
    assert spool(data_dir, "list").stdout == "0 queued, 0 dead\n"
