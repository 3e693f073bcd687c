"""Peak RSS of a real `inbound serve` receiving and dispatching 40 MB messages.

Each scenario starts a fresh receiver (so its peak is that scenario's), sends its messages over
that many SMTP sessions at once, waits until the s3 action stored every one, and reads the
process's VmHWM (peak resident set) from /proc: once every 250 arrived, and once dispatched.
The message is multipart/mixed: a short text part and one base64 attachment filling it to
just under the 40 MB default `--max-message-size`.

    python bench/memory.py                     # the three scenarios below
    python bench/memory.py --size 20MB --sessions 1,2

Scenarios: no rule looks inside the message (facts: size only); a rule with an `attachment`
condition (the MIME structure is walked at the end of DATA), one message and four at once.
Targets (issue 11): one message with an attachment rule under 150 MB, four at once under 300 MB.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 300.0
MB = 1024 * 1024

RULES = """\
version: 1
name: bench
domains: [example.com]
rules:
  - name: store
    recipients: [example.com]
    {condition}
    actions:
      - {{type: s3, bucket: mail, prefix: in/}}
"""
ATTACHMENT_RULE = 'unless: {attachment: {filename: "*.exe"}}'


@dataclass(frozen=True)
class Scenario:
    name: str
    condition: str
    sessions: int
    target_mb: int | None


@dataclass(frozen=True)
class Result:
    scenario: Scenario
    idle_mb: float
    received_mb: float
    dispatched_mb: float
    seconds: float
    stored: int


def message(size: int) -> bytes:
    """A multipart message of about `size` bytes: text, then one base64 attachment."""
    head = (
        b"From: big@sender.example\r\nTo: rcpt@example.com\r\nSubject: big\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=bench\r\n\r\n"
        b"--bench\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        b"--bench\r\nContent-Type: application/pdf\r\n"
        b'Content-Disposition: attachment; filename="report.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n"
    )
    tail = b"\r\n--bench--\r\n"
    lines = (size - len(head) - len(tail)) // 78  # 76 base64 characters and CRLF
    line = base64.b64encode(os.urandom(57)) + b"\r\n"
    return head + line * lines + tail


def peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for {pid}")


def start(work: Path, condition: str) -> tuple[subprocess.Popen[bytes], int]:
    (work / "rules.yaml").write_text(RULES.format(condition=condition))
    (work / "empty.zone").write_text("; no records: no DNS traffic\n")
    log = (work / "serve.log").open("wb")
    process = subprocess.Popen(  # noqa: S603 - our own entry point, fixed arguments
        [
            sys.executable,
            "-m",
            "inbound",
            "serve",
            "--rules",
            str(work / "rules.yaml"),
            "--data-dir",
            str(work / "data"),
            "--listen",
            "127.0.0.1:0",
            "--hostname",
            "bench.test",
            "--dns-zone",
            str(work / "empty.zone"),
        ],
        stdout=log,
        stderr=log,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in (work / "serve.log").read_text().splitlines():
            if '"server.started"' in line:
                return process, int(json.loads(line)["listen"].rpartition(":")[2])
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"inbound serve did not start: {(work / 'serve.log').read_text()}")


def send(port: int, raw: bytes, errors: list[str]) -> None:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=DEADLINE) as client:
            client.sendmail("big@sender.example", ["rcpt@example.com"], raw)
    except (OSError, smtplib.SMTPException) as exc:
        errors.append(f"{type(exc).__name__}: {exc}")


def stored(work: Path) -> int:
    folder = work / "data" / "s3" / "mail" / "in"
    if not folder.is_dir():
        return 0
    return len([p for p in folder.iterdir() if not p.name.startswith(".")])


def run(scenario: Scenario, raw: bytes) -> Result:
    work = Path(tempfile.mkdtemp(prefix="inbound-bench-"))
    process, port = start(work, scenario.condition)
    try:
        idle = peak_kb(process.pid)
        errors: list[str] = []
        began = time.monotonic()
        senders = [
            threading.Thread(target=send, args=(port, raw, errors))
            for _ in range(scenario.sessions)
        ]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(DEADLINE)
        if errors:
            raise RuntimeError(f"{scenario.name}: {errors}")
        received = peak_kb(process.pid)
        deadline = time.monotonic() + DEADLINE
        while stored(work) < scenario.sessions and time.monotonic() < deadline:
            time.sleep(0.1)
        seconds = time.monotonic() - began
        dispatched = peak_kb(process.pid)
        return Result(
            scenario, idle / 1024, received / 1024, dispatched / 1024, seconds, stored(work)
        )
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(work, ignore_errors=True)


def parse_size(text: str) -> int:
    units = {"KB": 1024, "MB": MB, "": 1}
    for unit, factor in units.items():
        if unit and text.upper().endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="40MB", help="message size (40MB: just under it)")
    parser.add_argument("--sessions", default="1,4", help="attachment-rule scenarios, comma list")
    args = parser.parse_args()
    size = parse_size(args.size) - 64 * 1024  # headers we prepend stay under the limit
    raw = message(size)
    scenarios = [Scenario("no message condition, 1 message", "", 1, None)]
    for count in (int(n) for n in args.sessions.split(",")):
        target = 150 if count == 1 else 300 if count == 4 else None
        name = f"attachment rule, {count} message{'s' if count > 1 else ''} at once"
        scenarios.append(Scenario(name, ATTACHMENT_RULE, count, target))
    results = []
    for scenario in scenarios:
        print(f"running: {scenario.name}", file=sys.stderr)
        results.append(run(scenario, raw))
    print(f"\nmessage: {len(raw) / MB:.1f} MB multipart, one base64 attachment")
    header = f"{'scenario':<38} {'idle':>6} {'recv':>6} {'dispatch':>9} {'secs':>6} {'stored':>6}"
    print(header + "  target (peak RSS, MB)")
    for r in results:
        target = r.scenario.target_mb
        met = "met" if target is not None and r.dispatched_mb < target else "MISSED"
        verdict = "" if target is None else f"< {target}: {met}"
        print(
            f"{r.scenario.name:<38} {r.idle_mb:6.0f} {r.received_mb:6.0f} {r.dispatched_mb:9.0f} "
            f"{r.seconds:6.1f} {r.stored:>3}/{r.scenario.sessions:<2}  {verdict}"
        )
    print(
        "idle, recv, dispatch: the process's peak RSS (VmHWM) at start, after every 250, "
        "after the s3 action stored every message"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
