"""Attachment conditions at the MIME limits, end to end (SPEC section 7, issue 11 items 4 and 6).

A real receiver over a raw socket: an x.exe at part 1,000 or depth 50 is seen by the rule; at
part 1,001 or depth 51 the message is refused `554 5.6.0` and nothing is stored, but only for a
recipient whose rules need attachments. `inbound evaluate` and `inbound test` decide the same.
The facts read at receipt go with the message: the dispatcher decides with them, and an entry
spooled before they were kept is read as before (and refused, never run, beyond the limits).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from inbound.core.envelope import Connection, Envelope
from inbound.core.ids import MessageIdGenerator
from inbound.core.message import Attachment, MessageFacts
from inbound.core.verdicts import Verdicts
from inbound.spool.store import Spool, SpoolMeta
from tests.integration.receiver import (
    DEADLINE,
    ROOT,
    Running,
    in_process,
    settings_for,
    start_child,
)
from tests.mime_samples import many_parts, nested

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RULES = """\
version: 1
name: mime
domains: [example.com]
rules:
  - name: no-exe
    recipients: [guarded@example.com]
    when: {attachment: {filename: "*.exe"}}
    actions:
      - {type: bounce, smtp_reply_code: "550", status_code: "5.7.1", message: "No .exe", sender: mailer-daemon@example.com}
  - name: exe
    recipients: [sorted@example.com]
    when: {attachment: {filename: "*.exe"}}
    actions:
      - {type: s3, bucket: mail, prefix: exe/}
  - name: kept
    recipients: [kept@example.com]
    when: {attachment: {filename: "*.exe"}}
    actions:
      - {type: lambda, function_arn: "arn:aws:lambda:us-east-1:123456789012:function:refuse", invocation_type: event}
  - name: store
    recipients: [example.com]
    actions:
      - {type: s3, bucket: mail, prefix: in/}
"""
EXE = Attachment("x.exe", "application/octet-stream")


def smtp_send(port: int, rcpt: str, message: bytes) -> str:
    """One transaction over a raw socket; the reply to the end of data."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        reader = sock.makefile("rb")

        def reply() -> str:
            while True:
                line = reader.readline().decode()
                assert line, "connection closed"
                if line[3:4] != "-":
                    return line.rstrip("\r\n")

        assert reply().startswith("220")
        for command in ("EHLO client.test", "MAIL FROM:<s@sender.test>", f"RCPT TO:<{rcpt}>"):
            sock.sendall(command.encode() + b"\r\n")
            assert reply()[:1] == "2", command
        sock.sendall(b"DATA\r\n")
        assert reply().startswith("354")
        assert b"\r\n." not in message  # no dot-stuffing needed
        sock.sendall(message + b".\r\n")
        answer = reply()
        sock.sendall(b"QUIT\r\n")
        return answer


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Running]:
    with in_process(settings_for(tmp_path, RULES)) as running:
        yield running


@pytest.mark.parametrize(
    ("message", "rcpt", "answer"),
    [
        pytest.param(many_parts(1000), "guarded@example.com", "550 5.7.1", id="part-1000-seen"),
        pytest.param(many_parts(1001), "guarded@example.com", "554 5.6.0", id="part-1001-refused"),
        pytest.param(nested(50), "guarded@example.com", "550 5.7.1", id="depth-50-seen"),
        pytest.param(nested(51), "guarded@example.com", "554 5.6.0", id="depth-51-refused"),
        pytest.param(many_parts(1001), "plain@example.com", "250 2.0.0", id="no-rule-needs-it"),
    ],
)
def test_smtp_at_and_beyond_the_mime_limits(
    receiver: Running, message: bytes, rcpt: str, answer: str
) -> None:
    reply = smtp_send(receiver.port, rcpt, message)
    assert reply.startswith(answer), reply
    if answer.startswith("250"):
        assert len(receiver.wait_stored(1)) == 1
    else:  # refused in the session: nothing on disk
        receiver.wait_idle()
        assert receiver.queued() == []
        assert receiver.stored() == {}
        assert list((receiver.data_dir / "spool" / "tmp").iterdir()) == []


def test_serve_flags_set_the_limits(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    child = start_child(tmp_path, "--max-mime-parts", "20", "--max-mime-depth", "4")
    try:
        assert smtp_send(child.port, "guarded@example.com", many_parts(20)).startswith("550 5.7.1")
        assert smtp_send(child.port, "guarded@example.com", many_parts(21)).startswith("554 5.6.0")
        assert smtp_send(child.port, "guarded@example.com", nested(4)).startswith("550 5.7.1")
        assert smtp_send(child.port, "guarded@example.com", nested(5)).startswith("554 5.6.0")
    finally:
        child.signal(signal.SIGTERM)
        assert child.process.wait(DEADLINE) == 0


@pytest.mark.parametrize(
    ("flag", "error"),
    [
        (("--max-mime-parts", "0"), "--max-mime-parts 0: expected 1 or more"),
        (("--max-mime-depth", "201"), "--max-mime-depth 201: expected 1 to 200"),
    ],
)
def test_bad_limits_are_refused_without_a_traceback(
    tmp_path: Path, flag: tuple[str, str], error: str
) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    done = inbound("serve", "--rules", "rules.yaml", *flag, cwd=tmp_path)
    assert done.returncode == 2
    assert error in done.stderr
    assert "Traceback" not in done.stderr


def inbound(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "inbound", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.mark.parametrize(
    ("message", "reply"),
    [
        pytest.param(many_parts(1000), {"code": 550, "status": "5.7.1"}, id="part-1000"),
        pytest.param(many_parts(1001), {"code": 554, "status": "5.6.0"}, id="part-1001"),
        pytest.param(nested(50), {"code": 550, "status": "5.7.1"}, id="depth-50"),
        pytest.param(nested(51), {"code": 554, "status": "5.6.0"}, id="depth-51"),
    ],
)
def test_evaluate_json_decides_as_the_receiver(
    tmp_path: Path, message: bytes, reply: dict[str, object]
) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    (tmp_path / "m.eml").write_bytes(message)
    done = inbound(
        "evaluate", "--rules", "rules.yaml", "--eml", "m.eml", "--rcpt", "guarded@example.com",
        "--mail-from", "s@sender.test", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data_reply = json.loads(done.stdout)["data_reply"]
    assert {k: data_reply[k] for k in ("code", "status")} == reply


def test_inbound_test_expects_the_refusal(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    (tmp_path / "beyond.eml").write_bytes(many_parts(1001))
    (tmp_path / "cases.yaml").write_text(
        "rules: rules.yaml\ncases:\n"
        "  - name: too many parts to check\n    eml: beyond.eml\n"
        "    mail_from: s@sender.test\n    rcpt: [guarded@example.com]\n"
        "    expect: {outcome: rejected, data_reply: 554 5.6.0, rules: []}\n"
        "  - name: nobody needs its attachments\n    eml: beyond.eml\n"
        "    mail_from: s@sender.test\n    rcpt: [plain@example.com]\n"
        "    expect: {outcome: accepted, rules: [store]}\n"
    )
    done = inbound("test", "cases.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


# -- parse once: the dispatcher decides with the facts kept in meta.json -----------------------


def spool_entry(tmp_path: Path, raw: bytes, facts: MessageFacts | None) -> str:
    """A message queued as the receiver queues one, to sorted@example.com."""
    spool = Spool(tmp_path / "data" / "spool")
    message_id = MessageIdGenerator().next()
    writer = spool.open_writer(message_id)
    writer.write(raw)
    writer.commit(
        SpoolMeta(
            message_id=message_id,
            envelope=Envelope("s@sender.test", ("sorted@example.com",)),
            connection=Connection.of("192.0.2.7", "client.test", tls=False),
            received_at=datetime.now(UTC),
            rules_digest=spool.save_rules(RULES),
            hostname="mx.test",
            verdicts=Verdicts(),
            size=len(raw),
            facts=facts,
        )
    )
    return message_id


def refuse(_event: object, _context: object) -> object:
    """A Lambda function that always fails: its message stays queued (retried in a minute)."""
    raise RuntimeError("refused")


def test_receipt_keeps_the_facts_in_meta_json(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, RULES, lambdas={"refuse": f"{__name__}:refuse"})
    with in_process(settings) as running:
        reply = smtp_send(running.port, "kept@example.com", many_parts(3))
        assert reply.startswith("250"), reply
        message_id = reply.split()[-1]
        meta_json = running.data_dir / "spool" / "queue" / message_id / "meta.json"
        meta = SpoolMeta.from_json(json.loads(meta_json.read_text()))
    assert meta.facts is not None
    assert meta.facts.attachments == (EXE,)
    assert meta.facts.subject == "parts"


def test_dispatch_decides_with_the_facts_read_at_receipt(tmp_path: Path) -> None:
    # meta.json says x.exe was attached; the bytes (as if changed since) have no attachment. A
    # dispatcher that read the message again would not store it under exe/.
    facts = MessageFacts(size=10, attachments=(EXE,))
    spool_entry(tmp_path, b"Subject: x\r\n\r\nhi\r\n", facts)
    with in_process(settings_for(tmp_path, RULES)) as running:
        assert len(running.wait_stored(1, "exe/")) == 1


def test_entry_spooled_before_facts_were_kept_is_read_at_dispatch(tmp_path: Path) -> None:
    spool_entry(tmp_path, many_parts(3), None)
    with in_process(settings_for(tmp_path, RULES)) as running:
        assert len(running.wait_stored(1, "exe/")) == 1


def test_old_entry_beyond_the_limits_is_dead_lettered_not_run(tmp_path: Path) -> None:
    message_id = spool_entry(tmp_path, many_parts(1001), None)
    with in_process(settings_for(tmp_path, RULES)) as running:
        dead = running.data_dir / "spool" / "dead" / message_id
        deadline = time.monotonic() + DEADLINE
        while not dead.is_dir() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert dead.is_dir()
        assert running.stored("exe/") == {}
    state = json.loads((dead / "state.json").read_text())
    assert "more than 1000 MIME parts" in state["dead_reason"]


# -- a read in progress never holds the process after SIGTERM ----------------------------------


def heavy_headers() -> bytes:
    """30 parts of a megabyte of header fields each: seconds of reading for the stdlib."""
    part = b"--b\r\n" + b"X-Filler: y\r\n" * 76_000 + b"Content-Type: text/plain\r\n\r\nhi\r\n"
    head = b"Subject: heavy\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    return head + part * 30 + b"--b--\r\n"


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_sigterm_during_a_read_exits_0_at_once(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    child = start_child(tmp_path, "--drain-timeout", "0.2s")
    message = heavy_headers()
    try:
        sending = threading.Thread(target=_send_quietly, args=(child.port, message), daemon=True)
        sending.start()
        # Received in full, then half a CPU-second of work: the server is reading the message.
        tmp = child.data_dir / "spool" / "tmp"
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline and not any(
            p.stat().st_size >= len(message) for p in tmp.glob("*/message.eml")
        ):
            time.sleep(0.01)
        busy = cpu_seconds(child.process.pid) + 0.5
        while time.monotonic() < deadline and cpu_seconds(child.process.pid) < busy:
            time.sleep(0.01)
        child.signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert child.process.wait(DEADLINE) == 0, child.log.read_text()[-2000:]
        took = time.monotonic() - signalled
    finally:
        if child.process.poll() is None:
            child.kill()
    # At most a chunk and a header block after the session is cancelled; the stdlib's read of
    # the whole message went on for seconds, and the process with it.
    assert took < 3.0, f"exited {took:.1f} s after SIGTERM"


def _send_quietly(port: int, message: bytes) -> None:
    with contextlib.suppress(OSError, AssertionError):  # the server goes away mid-transaction
        smtp_send(port, "guarded@example.com", message)
