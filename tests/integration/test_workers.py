"""`inbound serve --workers N`: several receiving processes behave as one server.

Each test runs the real command: a supervisor with two worker processes on one port. What a
user could notice is asserted: every message lands once, the metrics count all workers,
connection limits hold for the server as a whole, SIGHUP reaches every worker, a dead worker
is replaced, nothing outlives a killed supervisor, and SIGTERM exits 0.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.receiver import (
    DEADLINE,
    RULES,
    Child,
    events_of,
    free_port,
    start_child,
    wait_for,
)

pytestmark = pytest.mark.integration

QUEUED_AS = re.compile(r"queued as ([0-9a-z]{40})")
WORKERS = ("--workers", "2")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Child]]:
    children: list[Child] = []

    def run(*args: str, port: int = 0) -> Child:
        child = start_child(tmp_path, *WORKERS, *args, port=port)
        children.append(child)
        return child

    yield run
    for child in children:
        for pid in workers_of(child):
            _kill(pid)
        if child.process.poll() is None:
            child.kill()


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def workers_of(child: Child) -> list[int]:
    """PIDs of the live worker processes whose parent is `child` (multiprocessing spawn)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        state = stat.rpartition(")")[2].split()[0]
        if parent == child.process.pid and b"spawn_main" in command and state != "Z":
            found.append(int(entry.name))
    return sorted(found)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def send(port: int, token: str, rcpt: str = "someone@example.com") -> tuple[int, str]:
    """One message in a connection of its own: (DATA reply code, message ID or reply text)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("alice@sender.example")
        code, text = client.rcpt(rcpt)
        if code != 250:
            return code, text.decode()
        message = f"From: alice@sender.example\r\nTo: {rcpt}\r\nSubject: {token}\r\n\r\nHi.\r\n"
        code, text = client.data(message.encode())
    match = QUEUED_AS.search(text.decode())
    return code, match.group(1) if match else text.decode()


def metric(port: int, name: str, labels: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    pattern = re.compile(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", re.MULTILINE)
    match = pattern.search(body)
    return float(match.group(1)) if match else 0.0


def stop(child: Child) -> None:
    child.signal(signal.SIGTERM)
    assert child.process.wait(DEADLINE) == 0, child.log.read_text()


def test_two_workers_receive_and_the_supervisor_dispatches_and_counts_them_all(
    serve: Callable[..., Child],
) -> None:
    metrics_port = free_port()
    child = serve("--metrics", f"127.0.0.1:{metrics_port}")
    workers = workers_of(child)
    assert len(workers) == 2
    started = events_of(child, "server.started")
    assert started[0]["workers"] == 2
    assert started[0]["tls"] is False  # the same keys as one process's server.started

    ids = []
    for n in range(16):
        code, message_id = send(child.port, f"token-{n}")
        assert code == 250, message_id
        ids.append(message_id)
    wait_for(lambda: len(child_stored(child)) >= 16, "16 stored messages")
    assert sorted(child_stored(child)) == sorted(ids)
    # Each line a worker logs names it; the supervisor's lines (dispatch) do not.
    assert {e.get("worker") for e in events_of(child, "message.received")} <= {0, 1}
    assert all("worker" not in e for e in events_of(child, "message.dispatched"))

    assert metric(metrics_port, "inbound_messages_total", 'code="250"') == 16
    assert metric(metrics_port, "inbound_connections_total", 'result="accepted"') == 16
    assert metric(metrics_port, "inbound_actions_total", 'outcome="succeeded",type="S3"') == 16

    stop(child)
    assert events_of(child, "server.stopped")[-1]["drained"] is True
    assert sorted(e["worker"] for e in events_of(child, "worker.stopped")) == [0, 1]
    assert not [pid for pid in workers if alive(pid)], "a worker outlived its supervisor"


def child_stored(child: Child) -> dict[str, bytes]:
    folder = child.data_dir / "s3" / "mail" / "in"
    if not folder.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}


def test_connection_limits_hold_across_workers(serve: Callable[..., Child]) -> None:
    child = serve("--max-connections-per-ip", "2")
    greetings = []
    sockets = []
    try:
        for _ in range(6):
            sock = socket.create_connection(("127.0.0.1", child.port), timeout=5)
            sockets.append(sock)
            greetings.append(sock.recv(200))
    finally:
        for sock in sockets:
            sock.close()
    codes = [g[:3] for g in greetings]
    assert codes.count(b"220") == 2, greetings
    assert codes.count(b"421") == 4, greetings
    assert all(b"4.7.0" in g for g in greetings if g.startswith(b"421"))
    # The refused and closed connections are released: two new ones are welcome again.
    for _ in range(2):
        assert wait_for(lambda: send(child.port, "after")[0] == 250, "an accepted message")


def test_sighup_reloads_the_rules_of_every_worker(serve: Callable[..., Child]) -> None:
    child = serve()
    assert send(child.port, "before", "someone@inbound.example")[0] == 250
    rules = child.data_dir.parent / "rules.yaml"
    narrower = RULES.replace("[example.com, inbound.example]", "[example.com]")
    assert narrower != RULES
    rules.write_text(narrower)
    child.signal(signal.SIGHUP)
    wait_for(lambda: len(events_of(child, "rules.reloaded")) >= 3, "3 reloads")
    reloads = events_of(child, "rules.reloaded")
    assert sorted(e.get("worker", -1) for e in reloads) == [-1, 0, 1]
    # Whichever worker takes the connection, the domain is gone.
    for n in range(8):
        code, text = send(child.port, f"after-{n}", "someone@inbound.example")
        assert code == 550, text
    stop(child)


def test_a_worker_that_dies_is_replaced(serve: Callable[..., Child]) -> None:
    child = serve()
    first, second = workers_of(child)
    os.kill(first, signal.SIGKILL)
    exited = wait_for(lambda: events_of(child, "worker.exited"), "worker.exited")
    assert exited[0]["exit_code"] == -signal.SIGKILL
    replaced = wait_for(
        lambda: w if len(w := workers_of(child)) == 2 and first not in w else None,
        "a new worker",
    )
    assert second in replaced
    for n in range(6):
        assert send(child.port, f"after-{n}")[0] == 250
    wait_for(lambda: len(child_stored(child)) >= 6, "6 stored messages")
    stop(child)


def test_workers_exit_when_the_supervisor_is_killed_and_a_restart_takes_the_port(
    serve: Callable[..., Child],
) -> None:
    port = free_port()
    child = serve(port=port)
    code, queued = send(port, "before")
    assert code == 250
    workers = workers_of(child)
    child.kill()
    wait_for(lambda: not [pid for pid in workers if alive(pid)], "the orphaned workers to exit")
    again = serve(port=port)
    assert send(port, "after")[0] == 250
    wait_for(lambda: queued in child_stored(again), "the message acknowledged before the kill")
    stop(again)


def test_bad_worker_count_is_refused_without_a_traceback(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    result = subprocess.run(
        [sys.executable, "-m", "inbound", "serve", "--rules", str(rules), "--workers", "0"],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert result.returncode == 2
    assert "--workers 0: expected 1 to 64" in result.stderr
    assert "Traceback" not in result.stderr
