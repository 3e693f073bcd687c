"""Durability and at-least-once dispatch of `inbound serve` (SPEC section 7), across real
SIGKILLs of a child process, action retries with backoff, dead letters and `inbound spool`."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from tests.integration import flaky_functions
from tests.integration.receiver import (
    DEADLINE,
    ROOT,
    Child,
    events_of,
    free_port,
    log_events,
    start_child,
    wait_for,
)

pytestmark = pytest.mark.integration

T = TypeVar("T")
POLL = 0.02
FUNCTIONS = "tests.integration.flaky_functions"
QUEUED_AS = re.compile(r"queued as ([0-9a-z]{40})")


# -- helpers -----------------------------------------------------------------------------


def stop(child: Child) -> None:
    """SIGTERM, and the clean exit SPEC section 6 promises."""
    child.signal(signal.SIGTERM)
    assert child.process.wait(DEADLINE) == 0, child.log.read_text()


def ensure_dead(child: Child | None) -> None:
    if child is not None and child.process.poll() is None:
        child.kill()


def message(token: str, *, sender: str = "alice@sender.example", to: str = "") -> bytes:
    return (
        f"From: {sender}\r\n"
        f"To: {to or 'someone@example.com'}\r\n"
        f"Subject: {token}\r\n"
        f"Message-ID: <{token}@client.test>\r\n"
        "\r\n"
        f"Body of {token}.\r\n"
    ).encode()


def send(port: int, rcpt: str, token: str) -> str:
    """One message in its own session; the message ID of the 250."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.mail("alice@sender.example")[0] == 250
        assert client.rcpt(rcpt)[0] == 250
        code, text = client.data(message(token, to=rcpt))
        assert code == 250, text
    match = QUEUED_AS.search(text.decode())
    assert match, text
    return match.group(1)


def spool_dir(child: Child, where: str) -> Path:
    return child.data_dir / "spool" / where


def s3_object(child: Child, prefix: str, message_id: str) -> Path:
    return child.data_dir / "s3" / "mail" / prefix / message_id


def inbound_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inbound", *args],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        cwd=ROOT,
        check=False,
    )


# -- 1. SIGKILL while clients send -----------------------------------------------------------

CLIENTS = 10
PER_CLIENT = 50
TOTAL = CLIENTS * PER_CLIENT
# Another seed for a bug hunt: INBOUND_CRASH_SEED=N pytest -k sigkill
SEED = int(os.environ.get("INBOUND_CRASH_SEED", "20240607"))
TEST_BUDGET = 50.0
TOKEN = re.compile(rb"^Subject: (tok-\d+-\d+-\d+)\r$", re.MULTILINE)


@dataclass
class Ledger:
    """What every client saw, token by token; shared by the client threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    # token -> (code, text) of its final reply, or None: the connection broke before a reply.
    replies: dict[str, tuple[int, str] | None] = field(default_factory=dict)
    acked: dict[str, str] = field(default_factory=dict)  # token -> message ID of its 250
    delivered: set[tuple[int, int]] = field(default_factory=set)  # (client, message) acked
    errors: list[str] = field(default_factory=list)

    def sending(self, token: str) -> None:
        with self.lock:
            assert token not in self.replies
            self.replies[token] = None

    def answered(self, token: str, code: int, text: str, key: tuple[int, int]) -> None:
        with self.lock:
            self.replies[token] = (code, text)
            if code == 250:
                match = QUEUED_AS.search(text)
                if match is None:
                    self.errors.append(f"{token}: 250 without a message ID: {text!r}")
                    return
                self.acked[token] = match.group(1)
                self.delivered.add(key)

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)


def _client(number: int, port: int, ledger: Ledger, stop: threading.Event, end: float) -> None:
    """Send PER_CLIENT messages; resend (with a new token) each one that got no 250."""
    pending = deque(range(PER_CLIENT))
    attempt = 0
    while pending and not stop.is_set() and time.monotonic() < end:
        try:
            client = smtplib.SMTP("127.0.0.1", port, timeout=10)
        except OSError:  # the server is down: poll until it is back
            time.sleep(POLL)
            continue
        try:
            client.ehlo("client.test")
            while pending and not stop.is_set():
                index = pending[0]
                token = f"tok-{number}-{index}-{attempt}"
                attempt += 1
                ledger.sending(token)
                code, text = _transaction(client, number, token)
                ledger.answered(token, code, text, (number, index))
                if code == 250:
                    pending.popleft()
            client.quit()
        except (smtplib.SMTPServerDisconnected, OSError):
            pass  # the token in flight stays without a reply: not acknowledged
        finally:
            client.close()


def _transaction(client: smtplib.SMTP, number: int, token: str) -> tuple[int, str]:
    """MAIL, RCPT, DATA; the first non-2xx reply ends the transaction and is its reply."""
    code, text = client.mail(f"client{number}@sender.example")
    if code != 250:
        client.rset()
        return code, text.decode()
    code, text = client.rcpt("crash@example.com")
    if code != 250:
        client.rset()
        return code, text.decode()
    try:
        code, text = client.data(message(token, sender=f"client{number}@sender.example"))
    except smtplib.SMTPDataError as exc:  # DATA itself refused (not 354)
        error = exc.smtp_error
        return exc.smtp_code, error.decode() if isinstance(error, bytes) else error
    return code, text.decode()


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_sigkill_while_sending_loses_no_acknowledged_message(tmp_path: Path, workers: int) -> None:
    """With `--workers 2` the supervisor is what is killed: its workers die with it."""
    args = ("--workers", str(workers))
    started = time.monotonic()
    rng = random.Random(SEED)  # noqa: S311 - a reproducible schedule of kills, not a secret
    kills = rng.randint(3, 4)
    # Kill at random points of the stream of acknowledgements, spread over the whole run.
    thresholds = sorted(rng.sample(range(30, TOTAL - 50), kills))
    port = free_port()
    ledger = Ledger()
    halt = threading.Event()
    end = started + TEST_BUDGET - 15
    children: list[Child] = []
    child = start_child(tmp_path, *args, port=port)
    children.append(child)
    threads = [
        threading.Thread(target=_client, args=(n, port, ledger, halt, end), daemon=True)
        for n in range(CLIENTS)
    ]
    try:
        for thread in threads:
            thread.start()
        for threshold in thresholds:

            def reached(count: int = threshold) -> bool:
                return ledger.acked_count() >= count

            wait_for(reached, f"{threshold} acknowledged messages")
            time.sleep(rng.uniform(0.0, 0.03))  # a random moment, not a wait for anything
            child.kill()
            child = start_child(tmp_path, *args, port=port)
            children.append(child)
        for thread in threads:
            thread.join(max(0.1, end - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "clients did not finish in time"
        # One more crash, then a last start that must empty the queue.
        child.kill()
        child = start_child(tmp_path, *args, port=port)
        children.append(child)
        queue = spool_dir(child, "queue")
        wait_for(lambda: not any(queue.iterdir()), "an empty spool queue")
        stop(child)
    finally:
        halt.set()
        ensure_dead(child)  # when something above failed
        for thread in threads:
            thread.join(DEADLINE)

    assert ledger.errors == []
    assert len(children) == kills + 2
    assert len(ledger.delivered) == TOTAL, "every message was acknowledged in the end"
    data = tmp_path / "data"
    assert not any((data / "spool" / "dead").iterdir()), "nothing was dead-lettered"

    folder = data / "s3" / "mail" / "in"
    objects = {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}
    partial = sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
    assert partial == [], "temporary files of interrupted S3 writes remain"
    stored: dict[str, list[str]] = defaultdict(list)  # token -> object names
    for name, content in objects.items():
        found = TOKEN.findall(content)
        assert len(found) == 1, f"object {name} has no single Subject token: {found}"
        stored[found[0].decode()].append(name)

    # Every 250 is in the target, named by its message ID and carrying its token.
    missing = {t: m for t, m in ledger.acked.items() if m not in objects}
    assert missing == {}, f"{len(missing)} acknowledged messages were lost"
    mismatched = {t: m for t, m in ledger.acked.items() if stored.get(t) != [m]}
    assert mismatched == {}, "acknowledged tokens stored under another ID or more than once"
    # Once per message: no token in two objects.
    duplicates = {t: names for t, names in stored.items() if len(names) > 1}
    assert duplicates == {}
    # A stored message that was never acknowledged must come from a broken connection
    # (the crash fell between the commit and the 250): at least once. A 4xx/5xx means "not
    # taken", and such a message must not be stored.
    extras = {t: ledger.replies.get(t, "never sent") for t in stored if t not in ledger.acked}
    refused_but_stored = {t: r for t, r in extras.items() if r is not None}
    assert refused_but_stored == {}

    logs = [e for c in children for e in log_events(c.log)]
    unexpected = [e for e in logs if e["event"] in ("dispatch.failed", "message.unreadable")]
    assert unexpected == []
    resumed = [e["queued"] for e in logs if e["event"] == "server.started"][1:]
    broken = sum(1 for r in ledger.replies.values() if r is None)
    refused = sum(1 for r in ledger.replies.values() if r is not None and r[0] != 250)
    print(
        f"kills={kills} tokens={len(ledger.replies)} acked={len(ledger.acked)} "
        f"broken={broken} refused={refused} stored_unacked={len(extras)} "
        f"queued_at_restarts={resumed} "
        f"elapsed={time.monotonic() - started:.1f}s"
    )
    assert time.monotonic() - started < 60


# -- 2. retries, dead letters, dispositions ---------------------------------------------------


def _arn(name: str) -> str:
    return f"arn:aws:lambda:us-east-1:123456789012:function:{name}"


RETRY_RULES = f"""\
version: 1
name: retries
domains: [example.com]
rules:
  - name: flaky
    recipients: [flaky@example.com]
    actions:
      - {{type: lambda, function_arn: "{_arn("flaky")}", invocation_type: request_response}}
      - {{type: s3, bucket: mail, prefix: flaky/}}
  - name: gated
    recipients: [gated@example.com]
    actions:
      - {{type: lambda, function_arn: "{_arn("gate")}", invocation_type: request_response}}
      - {{type: s3, bucket: mail, prefix: gated/}}
  - name: stopping
    recipients: [stop@example.com]
    actions:
      - {{type: s3, bucket: mail, prefix: before-stop/}}
      - {{type: lambda, function_arn: "{_arn("stopper")}", invocation_type: request_response}}
      - {{type: s3, bucket: mail, prefix: after-stop/}}
  - name: later
    recipients: [stop@example.com]
    actions:
      - {{type: s3, bucket: mail, prefix: later-rule/}}
"""

LAMBDAS = (
    "--lambda",
    f"flaky={FUNCTIONS}:fail_twice",
    "--lambda",
    f"gate={FUNCTIONS}:fail_until_flag",
    "--lambda",
    f"stopper={FUNCTIONS}:stop_rule_set",
)


@pytest.fixture
def calls_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the test functions count their calls (the child inherits the environment)."""
    directory = tmp_path / "calls"
    directory.mkdir()
    monkeypatch.setenv(flaky_functions.ENV, str(directory))
    (tmp_path / "rules.yaml").write_text(RETRY_RULES)
    return directory


@pytest.fixture
def serve_retrying(tmp_path: Path, calls_dir: Path) -> Iterator[Callable[..., Child]]:
    children: list[Child] = []

    def run(*args: str) -> Child:
        child = start_child(tmp_path, *LAMBDAS, *args)
        children.append(child)
        return child

    yield run
    for child in children:
        ensure_dead(child)


def action_trail(child: Child, message_id: str) -> list[tuple[str, str, int]]:
    """(event, action type, attempt) of every action event of one message, in log order."""
    return [
        (e["event"], e["action"], e["attempt"])
        for e in log_events(child.log)
        if e.get("message_id") == message_id and e["event"].startswith("action.")
    ]


def test_failing_lambda_is_retried_and_the_next_action_runs_once(
    serve_retrying: Callable[..., Child], calls_dir: Path
) -> None:
    child = serve_retrying("--retry-delay", "0.1s")
    message_id = send(child.port, "flaky@example.com", "retry-me")
    wait_for(lambda: events_of(child, "message.dispatched", message_id), "message.dispatched")

    assert (
        flaky_functions.calls(calls_dir, "fail_twice", message_id) == flaky_functions.FAILURES + 1
    )
    assert s3_object(child, "flaky", message_id).is_file()
    assert not any(spool_dir(child, "queue").iterdir())
    assert not any(spool_dir(child, "dead").iterdir())
    assert action_trail(child, message_id) == [
        ("action.failed", "Lambda", 1),
        ("action.failed", "Lambda", 2),
        ("action.succeeded", "Lambda", 3),
        ("action.succeeded", "S3", 1),  # once: the retries did not repeat or skip it
    ]
    failures = events_of(child, "action.failed", message_id)
    assert all(f["transient"] and "FlakyFunctionError" in f["error"] for f in failures)
    deferred = [e["attempt"] for e in events_of(child, "message.deferred", message_id)]
    assert deferred == [1, 2]
    stop(child)


def test_dead_letter_then_spool_list_show_retry(
    serve_retrying: Callable[..., Child], calls_dir: Path
) -> None:
    child = serve_retrying("--max-retry-age", "1s", "--retry-delay", "0.2s")
    message_id = send(child.port, "gated@example.com", "dead-letter-me")
    dead = spool_dir(child, "dead") / message_id
    wait_for(dead.is_dir, f"spool/dead/{message_id}")
    [dead_event] = wait_for(
        lambda: events_of(child, "message.dead_lettered", message_id), "message.dead_lettered"
    )
    assert dead_event["reason"].startswith("retries expired: function gate failed")
    assert flaky_functions.calls(calls_dir, "fail_until_flag", message_id) >= 2
    assert not s3_object(child, "gated", message_id).exists()
    data_dir = str(child.data_dir)

    listed = inbound_cli("spool", "--data-dir", data_dir, "list")
    assert listed.returncode == 0, listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if message_id in line]
    assert " dead " in row
    assert "gated@example.com" in row
    assert "retries expired: function gate failed: FlakyFunctionError" in row
    assert "actions: gated/Lambda=failed" in row  # step 1:0: rule gated, its Lambda
    assert listed.stdout.splitlines()[-1] == "0 queued, 1 dead"
    listed_json = inbound_cli("spool", "--data-dir", data_dir, "list", "--json")
    [entry] = json.loads(listed_json.stdout)
    assert entry["message_id"] == message_id
    assert entry["state"] == "dead"
    assert "FlakyFunctionError" in entry["last_error"]
    assert [(a["step"], a["outcome"]) for a in entry["actions"]] == [("1:0", "failed")]

    shown = inbound_cli("spool", "--data-dir", data_dir, "show", message_id, "--json")
    assert shown.returncode == 0, shown.stderr
    state = json.loads(shown.stdout)
    assert state["state"] == "dead"
    assert state["meta"]["message_id"] == message_id
    assert state["meta"]["envelope"]["rcpt_tos"] == ["gated@example.com"]
    assert state["dispatch"]["dead_reason"].startswith("retries expired")
    [step] = state["dispatch"]["steps"].values()
    assert step["outcome"] == "failed"
    assert step["attempts"] >= 2

    # The function is fixed; the operator retries; the running server delivers it.
    (calls_dir / flaky_functions.SUCCEED_FLAG).touch()
    before = flaky_functions.calls(calls_dir, "fail_until_flag", message_id)
    retried = inbound_cli("spool", "--data-dir", data_dir, "retry", message_id)
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.strip() == f"{message_id}: queued for retry"
    assert not dead.exists()
    stored = s3_object(child, "gated", message_id)
    assert (spool_dir(child, "queue") / message_id).is_dir() or stored.exists()
    wait_for(stored.is_file, f"s3 gated/{message_id} after `spool retry`")
    wait_for(lambda: not any(spool_dir(child, "queue").iterdir()), "an empty queue")
    assert flaky_functions.calls(calls_dir, "fail_until_flag", message_id) == before + 1
    assert b"Subject: dead-letter-me" in stored.read_bytes()
    stop(child)


def test_stop_rule_set_disposition_skips_every_later_action(
    serve_retrying: Callable[..., Child], calls_dir: Path
) -> None:
    child = serve_retrying()
    message_id = send(child.port, "stop@example.com", "stop-here")
    wait_for(lambda: events_of(child, "message.dispatched", message_id), "message.dispatched")

    assert flaky_functions.calls(calls_dir, "stop_rule_set", message_id) == 1
    assert s3_object(child, "before-stop", message_id).is_file()
    assert not s3_object(child, "after-stop", message_id).exists()
    assert not s3_object(child, "later-rule", message_id).exists()
    assert action_trail(child, message_id) == [
        ("action.succeeded", "S3", 1),
        ("action.succeeded", "Lambda", 1),
    ]
    assert not any(spool_dir(child, "queue").iterdir())
    stop(child)


def test_restart_with_new_rules_dispatches_a_spooled_message_with_its_own(
    tmp_path: Path, serve_retrying: Callable[..., Child], calls_dir: Path
) -> None:
    child = serve_retrying("--retry-delay", "0.1s")
    message_id = send(child.port, "gated@example.com", "old-rules")
    # message.deferred, not action.failed: that failure is on disk (state.json) only then.
    wait_for(lambda: events_of(child, "message.deferred", message_id), "the gate to fail once")
    child.kill()
    # The new rules drop the gate and store elsewhere; the spooled message keeps the old ones.
    gate = f'      - {{type: lambda, function_arn: "{_arn("gate")}", invocation_type: request_response}}\n'
    assert gate in RETRY_RULES
    new_rules = RETRY_RULES.replace(gate, "").replace("prefix: gated/", "prefix: v2/")
    (tmp_path / "rules.yaml").write_text(new_rules)
    (calls_dir / flaky_functions.SUCCEED_FLAG).touch()

    child = serve_retrying("--retry-delay", "0.1s")
    [started] = events_of(child, "server.started")
    assert started["queued"] == 1
    wait_for(lambda: events_of(child, "message.dispatched", message_id), "message.dispatched")
    assert s3_object(child, "gated", message_id).is_file()
    assert not s3_object(child, "v2", message_id).exists()
    assert action_trail(child, message_id) == [
        ("action.succeeded", "Lambda", 2),  # attempt 1 failed before the kill
        ("action.succeeded", "S3", 1),
    ]
    stop(child)


def test_spool_retry_of_a_deferred_message_runs_it_now(
    serve_retrying: Callable[..., Child], calls_dir: Path
) -> None:
    """`inbound spool retry --help`: "retry dead-lettered (or deferred) messages now"."""
    child = serve_retrying("--retry-delay", "1h")
    message_id = send(child.port, "gated@example.com", "deferred")
    wait_for(lambda: events_of(child, "message.deferred", message_id), "message.deferred")
    (calls_dir / flaky_functions.SUCCEED_FLAG).touch()

    retried = inbound_cli("spool", "--data-dir", str(child.data_dir), "retry", message_id)
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.strip() == f"{message_id}: queued for retry"
    # Not in an hour: now (the running server picks it up).
    wait_for(s3_object(child, "gated", message_id).is_file, "the deferred message, retried now")
    stop(child)
