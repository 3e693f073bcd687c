"""Latency each scanner adds per message: clamd (TCP and unix socket) and spamd, over corpus mail.

Scans N messages of `fixtures/corpus/eml/` (`real/` and `spam-virus/`, sorted, repeated if N is
larger) one at a time, as the receiver would for one message, and prints per scanner the
median, p90 and maximum wall time of `scan()` in milliseconds, with the verdicts it gave.
Each scanner scans one message first, untimed (spamd forks its children lazily). With
`--concurrency C`, C scans run at once and the table also gives messages per second.

The daemons come from `INBOUND_TEST_CLAMD`, `INBOUND_TEST_CLAMD_SOCKET` and
`INBOUND_TEST_SPAMD` (the env file of `.ci/real-components.sh start`); without them this starts
its own with that script (root installs the packages on first use) and stops them at the end.

    python bench/scanners.py                  # 50 messages, one at a time
    python bench/scanners.py --messages 200 --concurrency 4
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from inbound.core.ports import MessageSource
from inbound.message.source import FileSource
from inbound.scan.auth import authenticate
from inbound.scan.clamd import ClamdScanner
from inbound.scan.dns import ZoneResolver
from inbound.scan.result import Scanner, ScanResult
from inbound.scan.spamd import SpamdScanner

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fixtures" / "corpus" / "eml"
SCRIPT = ROOT / ".ci" / "real-components.sh"


@dataclass(frozen=True)
class Row:
    name: str
    latencies: list[float]
    verdicts: Counter[str]
    wall: float
    concurrency: int

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def corpus(count: int) -> list[Path]:
    found = [*(CORPUS / "real").glob("*.eml"), *(CORPUS / "spam-virus").glob("*.eml")]
    paths = sorted(found, key=lambda p: p.name)  # both folders mixed
    return [paths[i % len(paths)] for i in range(count)]


async def measure(name: str, scanner: Scanner, paths: Sequence[Path], concurrency: int) -> Row:
    await scanner.scan(FileSource(paths[0]))
    latencies: list[float] = []
    verdicts: Counter[str] = Counter()
    gate = asyncio.Semaphore(concurrency)

    async def one(path: Path) -> None:
        async with gate:
            started = time.perf_counter()
            result = await scanner.scan(FileSource(path))
            latencies.append(time.perf_counter() - started)
            verdicts[result.verdict.value] += 1

    started = time.perf_counter()
    await asyncio.gather(*(one(p) for p in paths))
    return Row(name, latencies, verdicts, time.perf_counter() - started, concurrency)


def report(rows: Sequence[Row], sizes: Sequence[int]) -> None:
    head = ("scanner", "msgs", "median ms", "p90 ms", "max ms", "msg/s")
    print("{:<11} {:>5} {:>10} {:>8} {:>8} {:>7}  verdicts".format(*head))
    for row in rows:
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted(row.verdicts.items()))
        median = statistics.median(row.latencies) * 1e3
        print(
            f"{row.name:<11} {len(row.latencies):>5} {median:>10.1f}"
            f" {row.percentile(0.9) * 1e3:>8.1f} {max(row.latencies) * 1e3:>8.1f}"
            f" {len(row.latencies) / row.wall:>7.1f}  {verdicts}"
        )
    print()
    smallest, largest, middle = min(sizes), max(sizes), statistics.median(sizes)
    print(f"messages: {smallest:,} to {largest:,} bytes (median {middle:,.0f})", end="; ")
    print(f"{rows[0].concurrency} at a time; the spamd threshold is spamd's own (5.0 by default)")


def script(mode: str, state: Path, *, check: bool) -> None:
    """`.ci/real-components.sh MODE --state STATE`: a fixed argv, nothing from the user."""
    argv = [shutil.which("bash") or "/bin/bash", str(SCRIPT), mode, "--state", str(state)]
    subprocess.run(argv, check=check, stdout=subprocess.DEVNULL)  # noqa: S603 - fixed argv


@contextmanager
def daemons() -> Iterator[dict[str, str]]:
    """The addresses from the environment, or daemons started (and stopped) for this run."""
    keys = ("INBOUND_TEST_CLAMD", "INBOUND_TEST_SPAMD")
    if all(k in os.environ for k in keys):
        yield dict(os.environ)
        return
    state = Path(tempfile.mkdtemp(prefix="inbound-bench-"))
    state.chmod(0o755)  # spamd runs as debian-spamd and needs its own dir in here
    try:
        print(f"starting clamd and spamd with {SCRIPT.relative_to(ROOT)}", file=sys.stderr)
        script("start", state, check=True)
        env: dict[str, str] = {}
        for line in (state / "env").read_text().splitlines():
            key, _, value = line.partition("=")
            env[key] = value
        yield env
    finally:
        script("stop", state, check=False)
        shutil.rmtree(state, ignore_errors=True)


async def run(env: dict[str, str], paths: Sequence[Path], concurrency: int) -> list[Row]:
    scanners: list[tuple[str, Scanner]] = [("clamd tcp", ClamdScanner(env["INBOUND_TEST_CLAMD"]))]
    if env.get("INBOUND_TEST_CLAMD_SOCKET"):
        scanners.append(("clamd unix", ClamdScanner(env["INBOUND_TEST_CLAMD_SOCKET"])))
    scanners.append(("spamd tcp", SpamdScanner(env["INBOUND_TEST_SPAMD"])))
    # SPF, DKIM and DMARC with answers from the test zones: the CPU cost of the checks (key
    # parsing, signature verification), without the network's round trips.
    zones = sorted((ROOT / "fixtures" / "dns").glob("*.zone"))
    scanners.append(("auth (zones)", _Auth(ZoneResolver.from_files(zones))))
    rows = []
    for name, scanner in scanners:
        print(f"{name}: scanning {len(paths)} messages", file=sys.stderr, flush=True)
        rows.append(await measure(name, scanner, paths, concurrency))
    return rows


class _Auth:
    """`authenticate` seen as a scanner, so it is measured like the others."""

    def __init__(self, resolver: ZoneResolver) -> None:
        self.resolver = resolver

    async def scan(self, source: MessageSource) -> ScanResult:
        outcome = await authenticate(
            source,
            client_ip="192.0.2.10",
            helo="mail.example",
            mail_from="a@spf-pass.example",
            resolver=self.resolver,
            timeout=10.0,
        )
        return ScanResult(outcome.dkim, outcome.details.dmarc)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=50, help="messages per scanner (50)")
    parser.add_argument("--concurrency", type=int, default=1, help="scans at once (1)")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.concurrency < 1:
        parser.error("--messages and --concurrency must be at least 1")
    paths = corpus(args.messages)
    with daemons() as env:
        rows = asyncio.run(run(env, paths, args.concurrency))
    report(rows, [p.stat().st_size for p in paths])


if __name__ == "__main__":
    main()
