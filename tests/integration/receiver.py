"""A real `inbound serve` for tests: in this process on port 0, or as a child process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from inbound.app import Receiver
from inbound.settings import ServeSettings

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 20.0

RULES = """\
version: 1
name: test
domains: [example.com, inbound.example]
rules:
  - name: bounce-viruses
    recipients: [virus@example.com]
    actions:
      - {type: bounce, smtp_reply_code: "550", status_code: "5.7.1", message: "No viruses", sender: mailer-daemon@example.com}
  - name: secure
    recipients: [secure@example.com]
    tls_policy: require
    actions:
      - {type: s3, bucket: mail, prefix: secure/}
  - name: store
    recipients: [example.com, inbound.example]
    actions:
      - {type: add_header, name: X-Inbound-Test, value: stored}
      - {type: s3, bucket: mail, prefix: in/}
      - {type: sns, topic_arn: "arn:aws:sns:us-east-1:123456789012:inbound"}
"""


@dataclass
class Running:
    settings: ServeSettings
    port: int
    data_dir: Path

    def stored(self, prefix: str = "in/") -> dict[str, bytes]:
        """Objects the local S3 target wrote, by message ID."""
        folder = self.data_dir / "s3" / "mail" / prefix
        if not folder.is_dir():
            return {}
        return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}

    def wait_stored(self, count: int, prefix: str = "in/") -> dict[str, bytes]:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            found = self.stored(prefix)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        return self.stored(prefix)

    def queued(self) -> list[str]:
        queue = self.data_dir / "spool" / "queue"
        return sorted(p.name for p in queue.iterdir()) if queue.is_dir() else []

    def wait_idle(self) -> None:
        """Until the dispatcher has emptied the queue."""
        deadline = time.monotonic() + DEADLINE
        while self.queued() and time.monotonic() < deadline:
            time.sleep(0.02)


def empty_zone(tmp_path: Path) -> Path:
    """A zone file with no records: every DNS question has no answer, at once, offline."""
    zone = tmp_path / "empty.zone"
    zone.write_text("; no records: tests never ask the network\n")
    return zone


def settings_for(tmp_path: Path, rules: str = RULES, **overrides: object) -> ServeSettings:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(rules)
    base = ServeSettings(
        rules=rules_file,
        data_dir=tmp_path / "data",
        port=0,
        hostname="mx.test",
        drain_timeout=2.0,
        dns_zones=(empty_zone(tmp_path),),
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


@contextlib.contextmanager
def in_process(settings: ServeSettings) -> Iterator[Running]:
    """Run a Receiver (built by `inbound.app.build`, as `inbound serve` is) on its own event
    loop in a thread; stop it on exit."""
    ready = threading.Event()
    holder: dict[str, object] = {}

    def main() -> None:
        async def go() -> None:
            receiver = Receiver(settings)
            holder["receiver"] = receiver
            holder["loop"] = asyncio.get_running_loop()
            await receiver.start()
            ready.set()
            await receiver.serve()  # until stop(), then drained as in `inbound serve`

        try:
            asyncio.run(go())
        except BaseException as exc:  # surfaced to the test below
            holder["error"] = exc
            ready.set()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(DEADLINE), "receiver did not start"
    if "error" in holder:
        raise holder["error"]  # type: ignore[misc]
    receiver = holder["receiver"]
    assert isinstance(receiver, Receiver)
    try:
        yield Running(settings, receiver.server.port, settings.data_dir)
    finally:
        loop = holder["loop"]
        assert isinstance(loop, asyncio.AbstractEventLoop)
        loop.call_soon_threadsafe(receiver.stop)
        thread.join(DEADLINE)


@dataclass
class Child:
    process: subprocess.Popen[str]
    port: int
    data_dir: Path
    log: Path

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(DEADLINE)


def start_child(
    tmp_path: Path,
    *args: str,
    port: int = 0,
    umask: int = -1,
    preexec_fn: Callable[[], None] | None = None,
    env: Mapping[str, str] | None = None,
) -> Child:
    """`inbound serve` as a child process; waits for its `server.started` log line.

    `umask`: the child's, if not -1 (this process's). `preexec_fn` runs in the child before
    `inbound` starts (e.g. to set its limits). `env`: more environment variables."""
    rules = tmp_path / "rules.yaml"
    if not rules.exists():
        rules.write_text(RULES)
    data_dir = tmp_path / "data"
    log = tmp_path / f"serve-{time.monotonic_ns()}.log"
    environment = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}
    handle = log.open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inbound",
            "serve",
            "--rules",
            str(rules),
            "--data-dir",
            str(data_dir),
            "--listen",
            f"127.0.0.1:{port}",
            "--hostname",
            "mx.test",
            "--dns-zone",
            str(empty_zone(tmp_path)),
            *args,
        ],
        stdout=handle,
        stderr=handle,
        text=True,
        env=environment,
        umask=umask,
        preexec_fn=preexec_fn,  # noqa: PLW1509 - the tests' own limits, set before any thread
    )
    handle.close()  # the child has its own descriptor
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if '"server.started"' in line:
                listen = json.loads(line)["listen"]
                return Child(process, int(listen.rpartition(":")[2]), data_dir, log)
        if process.poll() is not None:
            raise AssertionError(f"inbound serve exited {process.returncode}: {log.read_text()}")
        time.sleep(0.02)
    process.kill()
    raise AssertionError(f"inbound serve did not start: {log.read_text()}")


# -- polling and logs ------------------------------------------------------------------

T = TypeVar("T")
POLL = 0.02


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], T | None], what: str, deadline: float = DEADLINE) -> T:
    """Poll `check` until it returns something true (a non-empty list, True, a path)."""
    end = time.monotonic() + deadline
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {deadline}s waiting for {what}")
        time.sleep(POLL)


def log_events(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a server log (a line being written is left out)."""
    lines = path.read_text().split("\n")[:-1]
    return [json.loads(line) for line in lines if line.strip()]


def events_of(child: Child, event: str, message_id: str | None = None) -> list[dict[str, Any]]:
    return [
        e
        for e in log_events(child.log)
        if e.get("event") == event and (message_id is None or e.get("message_id") == message_id)
    ]
