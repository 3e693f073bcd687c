"""The real clamd and spamd for integration tests: from `.ci/run`'s environment, or started
here with `.ci/real-components.sh` (so `pytest` alone works). Under `CI=true` a daemon that
cannot be started or reached fails the tests; elsewhere they are skipped.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest

from inbound.scan.clamd import ClamdScanner
from inbound.scan.result import DaemonError
from inbound.scan.spamd import SpamdScanner
from tests.conftest import ROOT

T = TypeVar("T")
SCRIPT = ROOT / ".ci" / "real-components.sh"
START_TIMEOUT = 240.0


def run(coroutine: Awaitable[T]) -> T:
    async def main() -> T:
        return await coroutine

    return asyncio.run(main())


def timed(coroutine: Awaitable[T]) -> tuple[T, float]:
    start = time.monotonic()
    result = run(coroutine)
    return result, time.monotonic() - start


def unavailable(reason: str) -> NoReturn:
    """Skip on a developer's machine without the daemons; under CI=true that is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the scanner tests must run)")
    pytest.skip(reason)


# -- the daemons -------------------------------------------------------------------------


@dataclass(frozen=True)
class Daemons:
    clamd: str
    clamd_socket: str
    clamd_stream_max: int
    spamd: str


def from_environment(env: dict[str, str]) -> Daemons:
    return Daemons(
        clamd=env["INBOUND_TEST_CLAMD"],
        clamd_socket=env.get("INBOUND_TEST_CLAMD_SOCKET", ""),
        clamd_stream_max=int(env.get("INBOUND_TEST_CLAMD_STREAM_MAX", "0")),
        spamd=env["INBOUND_TEST_SPAMD"],
    )


def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            env[key] = value
    return env


async def ping_all(daemons: Daemons) -> None:
    pings = [ClamdScanner(daemons.clamd, timeout=10).ping()]
    pings.append(SpamdScanner(daemons.spamd, timeout=10).ping())
    if daemons.clamd_socket:
        pings.append(ClamdScanner(daemons.clamd_socket, timeout=10).ping())
    failures = [r for r in await asyncio.gather(*pings, return_exceptions=True) if r is not None]
    for failure in failures:
        if not isinstance(failure, DaemonError):
            raise failure
    if failures:
        raise DaemonError("; ".join(str(f) for f in failures))


def start_daemons() -> Iterator[Daemons]:
    if "INBOUND_TEST_CLAMD" in os.environ and "INBOUND_TEST_SPAMD" in os.environ:
        found = from_environment(dict(os.environ))
        try:
            run(ping_all(found))
        except DaemonError as exc:
            pytest.fail(f"{exc}; unset INBOUND_TEST_CLAMD/SPAMD to let the tests start their own")
        yield found
        return
    # Under /tmp and world-searchable: spamd runs as debian-spamd and needs its own dir in here.
    state = Path(tempfile.mkdtemp(prefix="inbound-rc-"))
    state.chmod(0o755)
    try:
        try:
            started = subprocess.run(
                ["bash", str(SCRIPT), "start", "--state", str(state)],
                capture_output=True,
                text=True,
                timeout=START_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            unavailable(f"{SCRIPT} start took more than {START_TIMEOUT:g} s")
        if started.returncode != 0:
            unavailable(f"{SCRIPT} start failed:\n{started.stderr[-3000:]}")
        found = from_environment(read_env_file(state / "env"))
        try:
            run(ping_all(found))
        except DaemonError as exc:
            unavailable(f"started, but: {exc}")
        yield found
    finally:
        subprocess.run(
            ["bash", str(SCRIPT), "stop", "--state", str(state)],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(state, ignore_errors=True)
