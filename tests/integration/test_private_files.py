"""SPEC section 7, Files: the data directory is 0700, every directory in it 0700 and every file
0600, whatever the umask; one left open by an older version is made private at start.

The receiver runs as a child process started under umask 000, the worst an operator's shell
can give: before, its spool, stored objects and JSON lines were world-writable.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import flaky_functions
from tests.integration.receiver import (
    DEADLINE,
    ROOT,
    Child,
    events_of,
    start_child,
    wait_for,
)

RULES = """\
version: 1
name: files
domains: [example.com]
rules:
  - name: store
    recipients: [store@example.com]
    actions:
      - {type: s3, bucket: mail, prefix: in/}
      - {type: sns, topic_arn: "arn:aws:sns:us-east-1:123456789012:inbound"}
      - {type: lambda, function_arn: "arn:aws:lambda:us-east-1:123456789012:function:record"}
      - {type: bounce, smtp_reply_code: "550", status_code: "5.1.1", message: "Gone", sender: mailer-daemon@example.com}
  - name: gated
    recipients: [gated@example.com]
    actions:
      - {type: lambda, function_arn: "arn:aws:lambda:us-east-1:123456789012:function:gate", invocation_type: request_response}
"""

GATE = f"gate={flaky_functions.__name__}:fail_until_flag"
RETRY_FAST = ("--max-retry-age", "1s", "--retry-delay", "0.2s", "--max-retry-delay", "0.2s")
WORKERS = {"one-process": (), "workers": ("--workers", "2")}


def send(port: int, rcpt: str) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=DEADLINE) as client:
        client.ehlo("client.test")
        assert client.mail("alice@sender.example")[0] == 250
        assert client.rcpt(rcpt)[0] == 250
        code, text = client.data(b"Subject: private\r\n\r\nFor the receiver's user only.\r\n")
    assert code == 250, text
    return text.decode().rsplit(" ", 1)[1]


def open_to_others(data_dir: Path) -> list[str]:
    """Every entry of `data_dir` (itself included) that is not 0700 (directory) or 0600."""
    wrong = []
    for path in [data_dir, *data_dir.rglob("*")]:
        info = path.lstat()
        expected = 0o700 if stat.S_ISDIR(info.st_mode) else 0o600
        if stat.S_IMODE(info.st_mode) != expected:
            wrong.append(f"{path.relative_to(data_dir)}: {stat.S_IMODE(info.st_mode):04o}")
    return wrong


@pytest.fixture
def calls_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "calls"
    directory.mkdir()
    monkeypatch.setenv(flaky_functions.ENV, str(directory))
    return directory


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        if child.process.poll() is None:
            child.kill()


def stop(child: Child) -> None:
    child.signal(signal.SIGTERM)
    assert child.process.wait(DEADLINE) == 0, child.log.read_text()


def inbound_cli(*args: str, umask: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inbound", *args],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        umask=umask,
        check=False,
    )


@pytest.mark.integration
@pytest.mark.parametrize("workers", WORKERS.values(), ids=WORKERS)
def test_everything_in_the_data_dir_is_private_under_umask_000(
    tmp_path: Path, calls_dir: Path, children: list[Child], workers: tuple[str, ...]
) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    child = start_child(
        tmp_path, "--tls-self-signed", "--lambda", GATE, *RETRY_FAST, *workers, umask=0
    )
    children.append(child)
    data = child.data_dir
    stored = send(child.port, "store@example.com")
    gated = send(child.port, "gated@example.com")
    wait_for(lambda: events_of(child, "message.dispatched", stored), "the stored message")
    wait_for(lambda: events_of(child, "message.dead_lettered", gated), "the dead letter")

    made = {
        "inbound.lock",
        f"s3/mail/in/{stored}",
        "sns/inbound.jsonl",
        "lambda/record.jsonl",
        "bounce/outbox.jsonl",
        f"spool/dead/{gated}/message.eml",
        f"spool/dead/{gated}/meta.json",
        f"spool/dead/{gated}/state.json",
        "tls/self-signed.key",
        "tls/self-signed.crt",
    }
    if workers:
        made |= {"run/connections.lock"}
        assert list((data / "run" / "metrics").glob("*.db")), "no worker metrics files"
    assert made <= {str(p.relative_to(data)) for p in data.rglob("*") if p.is_file()}
    assert open_to_others(data) == []

    # `inbound spool retry` rewrites state.json and moves the message back to queue/.
    (calls_dir / flaky_functions.SUCCEED_FLAG).touch()
    retried = inbound_cli("spool", "--data-dir", str(data), "retry", gated, umask=0)
    assert retried.returncode == 0, retried.stderr
    wait_for(lambda: events_of(child, "message.dispatched", gated), "the retried message")
    stop(child)
    assert open_to_others(data) == []


def loosen(data_dir: Path) -> None:
    """Modes as an older version left them under umask 022."""
    for path in [data_dir, *data_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.mark.integration
def test_a_data_dir_left_open_by_an_older_version_is_made_private(
    tmp_path: Path, calls_dir: Path, children: list[Child]
) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    # The same layout as an older version's: a delivered message's files in the targets, a
    # dead letter in the spool, a rule set, the lock; then the modes it gave them.
    older = start_child(tmp_path, "--lambda", GATE, *RETRY_FAST)
    children.append(older)
    stored = send(older.port, "store@example.com")
    gated = send(older.port, "gated@example.com")
    wait_for(lambda: events_of(older, "message.dispatched", stored), "the stored message")
    wait_for(lambda: events_of(older, "message.dead_lettered", gated), "the dead letter")
    stop(older)
    data = older.data_dir
    loosen(data)
    assert len(open_to_others(data)) > 10
    beside = tmp_path / "rules.yaml"  # outside the data dir: never touched

    child = start_child(tmp_path, "--lambda", GATE, *RETRY_FAST, umask=0o022)
    children.append(child)
    assert open_to_others(data) == []
    [protected] = events_of(child, "data_dir.protected")
    assert (protected["level"], protected["mode_was"]) == ("warning", "0755")
    assert stat.S_IMODE(beside.stat().st_mode) == 0o644
    assert (data / "spool" / "dead" / gated / "state.json").is_file()

    # The receiver works on what it protected: the dead letter is retried and delivered.
    (calls_dir / flaky_functions.SUCCEED_FLAG).touch()
    retried = inbound_cli("spool", "--data-dir", str(data), "retry", gated, umask=0o022)
    assert retried.returncode == 0, retried.stderr
    wait_for(lambda: events_of(child, "message.dispatched", gated), "the retried message")
    again = send(child.port, "store@example.com")
    wait_for(lambda: events_of(child, "message.dispatched", again), "a new message")
    stop(child)
    assert open_to_others(data) == []
    lines = (data / "sns" / "inbound.jsonl").read_text().splitlines()
    assert len([json.loads(line) for line in lines]) == 2

    # A second start finds nothing to protect and says nothing.
    quiet = start_child(tmp_path, umask=0o022)
    children.append(quiet)
    stop(quiet)
    assert events_of(quiet, "data_dir.protected") == []
