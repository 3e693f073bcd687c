"""`inbound serve` as an operator starts and watches it (issue 14): its name and the warning
when it is not fully qualified, a text log for a terminal, a SIGHUP during start-up, the
processes' names in `ps`, and the queue-depth gauge returning to 0.

Each test runs a real `inbound serve` child and looks only at what a user sees: its stderr,
the greeting, /proc, the exit code and `--metrics` over HTTP.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration import flaky_functions
from tests.integration.receiver import DEADLINE, ROOT, RULES, empty_zone, free_port, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@dataclass
class Serving:
    process: subprocess.Popen[bytes]
    log: Path
    data_dir: Path

    def text(self) -> str:
        return self.log.read_text()

    def json_lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.text().split("\n")[:-1] if line.strip()]

    def port(self) -> int:
        found = re.search(r"listen[=\":\s]+127\.0\.0\.1:(\d+)", self.text())
        assert found, self.text()
        return int(found.group(1))


Serve = Callable[..., Serving]  # (*flags, hostname=...) -> a started child


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    started: list[Serving] = []

    def run(*args: str, hostname: str | None = "mx.test", rules: str = RULES) -> Serving:
        rules_file = tmp_path / "rules.yaml"
        rules_file.write_text(rules)
        log = tmp_path / f"serve-{len(started)}.log"
        data_dir = tmp_path / f"data-{len(started)}"
        command = [
            sys.executable,
            "-m",
            "inbound",
            "serve",
            "--rules",
            str(rules_file),
            "--data-dir",
            str(data_dir),
            "--listen",
            "127.0.0.1:0",
            "--dns-zone",
            str(empty_zone(tmp_path)),
            *(["--hostname", hostname] if hostname else []),
            *args,
        ]
        with log.open("wb") as handle:
            process = subprocess.Popen(
                command,
                stdout=handle,
                stderr=handle,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        serving = Serving(process, log, data_dir)
        started.append(serving)
        return serving

    yield run
    for serving in started:
        if serving.process.poll() is None:
            serving.process.send_signal(signal.SIGTERM)
            try:
                serving.process.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                serving.process.kill()
                serving.process.wait(DEADLINE)


def started(serving: Serving) -> Serving:
    def ready() -> bool:
        assert serving.process.poll() is None, f"exited {serving.process.returncode}: " + (
            serving.text()
        )
        return "server.started" in serving.text()

    wait_for(ready, "server.started")
    return serving


def stop(serving: Serving) -> None:
    serving.process.send_signal(signal.SIGTERM)
    assert serving.process.wait(DEADLINE) == 0, serving.text()


def greeting(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return sock.makefile("rb").readline().decode()


# -- --hostname --------------------------------------------------------------------------------


def test_the_default_hostname_is_the_machines_name_and_unqualified_is_warned(serve: Serve) -> None:
    serving = started(serve(hostname=None))
    name = greeting(serving.port()).split()[1]
    if socket.gethostname() not in {"", "localhost"}:
        assert name != "localhost"  # what socket.getfqdn() alone gave where /etc/hosts says so
    warned = [e for e in serving.json_lines() if e["event"] == "hostname.not_qualified"]
    if "." in name:
        assert not warned
    else:
        assert warned, serving.text()
        assert warned[0]["hostname"] == name
        assert warned[0]["level"] == "warning"
    stop(serving)


@pytest.mark.parametrize(("hostname", "warned"), [("mx", True), ("mx.example.com", False)])
def test_a_hostname_without_a_dot_is_warned_at_start(
    serve: Serve, hostname: str, warned: bool
) -> None:
    serving = started(serve(hostname=hostname))
    assert greeting(serving.port()).startswith(f"220 {hostname} ")
    lines = [e for e in serving.json_lines() if e["event"] == "hostname.not_qualified"]
    assert bool(lines) == warned
    stop(serving)


# -- --log-format text -------------------------------------------------------------------------

TEXT_LINE = re.compile(r"^\S+ (debug|info|warning|error|critical) +[a-z_]+(\.[a-z_]+)+( \S+=.*)?$")


def test_the_text_log_format_is_one_readable_line_per_event(serve: Serve) -> None:
    serving = started(serve("--log-format", "text"))
    with smtplib.SMTP("127.0.0.1", serving.port(), timeout=10) as client:
        client.ehlo("client.test")
        client.sendmail(
            "alice@sender.example",
            ["bob@example.com"],
            b"Subject: not for the log\r\n\r\nNor this body.\r\n",
        )
    wait_for(lambda: "message.dispatched" in serving.text(), "message.dispatched")
    stop(serving)
    lines = serving.text().splitlines()
    assert lines
    for line in lines:
        assert TEXT_LINE.match(line), line
    received = next(line for line in lines if " message.received " in line)
    assert "sender=alice@sender.example" in received
    assert "client_ip=127.0.0.1" in received
    assert "not for the log" not in serving.text()
    assert "Nor this body" not in serving.text()


# -- SIGHUP while starting ---------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_sighup_during_start_up_is_not_fatal(serve: Serve, workers: str) -> None:
    serving = serve("--workers", workers)
    # From the moment it makes its data directory (early in its start-up: flags parsed, rules
    # checked) until it listens, SIGHUP after SIGHUP: a reload asked for while it starts, or a
    # terminal closing. Looked for every millisecond, so the first comes well before it listens.
    deadline = time.monotonic() + DEADLINE
    while not serving.data_dir.exists():
        assert serving.process.poll() is None, serving.text()
        assert time.monotonic() < deadline, "no data directory"
        time.sleep(0.001)

    def hang_up() -> bool:
        if serving.process.poll() is not None:
            raise AssertionError(f"killed by SIGHUP ({serving.process.returncode})")
        serving.process.send_signal(signal.SIGHUP)
        return "server.started" in serving.text()

    wait_for(hang_up, "server.started")
    assert serving.process.poll() is None
    wait_for(lambda: "rules.reloaded" in serving.text(), "the SIGHUPs answered with a reload")
    assert greeting(serving.port()).startswith("220 ")
    stop(serving)


# -- ps ----------------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text().rpartition(")")[2].split()
                if int(stat[1]) == pid and stat[0] != "Z":
                    found.append(int(entry.name))
    return found


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl")
def test_the_supervisor_and_each_worker_have_their_own_name_in_ps(serve: Serve) -> None:
    serving = started(serve("--workers", "2"))
    pid = serving.process.pid

    def names() -> set[str] | None:
        found = {comm(child) for child in children(pid)}
        return found if {"inbound-w0", "inbound-w1"} <= found else None

    wait_for(names, "workers named inbound-w0 and inbound-w1")
    assert comm(pid) == "inbound-super"
    stop(serving)


# -- inbound_spool_depth -----------------------------------------------------------------------


def depth(port: int, state: str) -> float | None:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    match = re.search(rf'^inbound_spool_depth\{{state="{state}"\}} (\S+)$', body, re.MULTILINE)
    return float(match.group(1)) if match else None


def test_the_queue_depth_returns_to_zero_once_the_queue_is_empty(serve: Serve) -> None:
    metrics = free_port()
    serving = started(serve("--metrics", f"127.0.0.1:{metrics}"))
    with smtplib.SMTP("127.0.0.1", serving.port(), timeout=10) as client:
        for n in range(3):
            client.sendmail("a@sender.example", ["bob@example.com"], f"Subject: {n}\r\n\r\n.")
    wait_for(lambda: serving.text().count('"message.dispatched"') == 3, "three dispatched")
    wait_for(lambda: depth(metrics, "queued") == 0.0, "inbound_spool_depth{queued} 0")
    stop(serving)


SLOW_RULES = RULES.replace(
    "rules:\n",
    """rules:
  - name: slow
    recipients: [slow@example.com]
    actions:
      - {type: lambda, function_arn: "arn:aws:lambda:us-east-1:123456789012:function:slow",
         invocation_type: request_response}
""",
    1,
)


def test_the_queue_depth_counts_a_message_from_its_250_until_it_leaves(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    functions = tmp_path / "functions"
    functions.mkdir()
    monkeypatch.setenv(flaky_functions.ENV, str(functions))
    metrics = free_port()
    serving = serve(
        "--metrics",
        f"127.0.0.1:{metrics}",
        "--lambda",
        "slow=tests.integration.flaky_functions:wait_for_flag",
        rules=SLOW_RULES,
    )
    started(serving)
    with smtplib.SMTP("127.0.0.1", serving.port(), timeout=10) as client:
        client.sendmail("a@sender.example", ["slow@example.com"], b"Subject: s\r\n\r\n.")
    # Its action is running (held by the function): the message is in the queue, and counted
    # so well before the dispatcher's first rescan of the spool (5 s after the start).
    wait_for(lambda: depth(metrics, "queued") == 1.0, "inbound_spool_depth{queued} 1", 2.0)
    (functions / flaky_functions.SUCCEED_FLAG).touch()
    wait_for(lambda: '"message.dispatched"' in serving.text(), "message.dispatched")
    wait_for(lambda: depth(metrics, "queued") == 0.0, "inbound_spool_depth{queued} 0")
    stop(serving)
