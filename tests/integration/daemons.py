"""The real clamd and spamd for integration tests: from `.ci/run`'s environment, or started
here with `.ci/real-components.sh` (so `pytest` alone works). Under `CI=true` a daemon that
cannot be started or reached fails the tests; elsewhere they are skipped.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from inbound.scan.clamd import ClamdScanner
from inbound.scan.result import DaemonError
from inbound.scan.spamd import SpamdScanner
from tests.conftest import ROOT
from tests.unavailable import unavailable

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


# -- the moto server ---------------------------------------------------------------------
# Separate from the scanner daemons: the AWS target tests need moto only, and moto needs no
# root or apt, so it is started here directly when .ci/run did not provide one.

MOTO_ENV = "INBOUND_TEST_AWS_ENDPOINT"
MOTO_START_TIMEOUT = 30.0


def moto_request(endpoint: str, path: str, body: object | None = None) -> bytes:
    """GET (or POST `body` as JSON to) the moto server's own API, e.g. `/moto-api/config`."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - a loopback http URL we built
        endpoint + path,
        data=data,
        headers={"Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return bytes(response.read())


def _moto_ready(endpoint: str) -> bool:
    try:
        moto_request(endpoint, "/moto-api/")
    except OSError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto() -> Iterator[str]:
    """Yield a moto server's endpoint (`http://127.0.0.1:PORT`) with the lambda-simple backend:
    `.ci/run`'s (INBOUND_TEST_AWS_ENDPOINT), or one of this run's own."""
    endpoint = os.environ.get(MOTO_ENV)
    if endpoint:
        if not _moto_ready(endpoint):
            pytest.fail(f"{MOTO_ENV}={endpoint} does not answer GET /moto-api/")
        moto_request(endpoint, "/moto-api/config", {"lambda": {"use_docker": False}})
        yield endpoint
        return
    yield from own_moto(lambda_simple=True)


def own_moto(*, lambda_simple: bool) -> Iterator[str]:
    """Start a moto server of the caller's own and yield its endpoint; stop it afterwards.

    `lambda_simple`: Lambda without Docker (invocations answer with the payload or a queued
    result). False keeps moto's default Lambda backend: functions can be created and looked up,
    and only an invocation would need Docker. SES's CreateReceiptRule looks functions up in that
    default backend only, and since moto 5.2.2 CloudFormation creates them in the lambda-simple
    one when it is selected (5.2.1 still used the default), so a test that deploys functions and
    then points receipt rules at them needs a server without `use_docker: false`.
    """
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        unavailable("moto server not installed (pip install -c constraints.txt -e '.[dev]')")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + MOTO_START_TIMEOUT
            while not _moto_ready(endpoint):
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read()[-3000:].decode(errors="replace")
                    unavailable(f"moto server did not start on {endpoint}:\n{tail}")
                time.sleep(0.05)
            if lambda_simple:
                moto_request(endpoint, "/moto-api/config", {"lambda": {"use_docker": False}})
            yield endpoint
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)
