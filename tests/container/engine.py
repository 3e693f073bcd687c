"""The Docker engine for the container tests: whether one is there (as `.ci/run` reported it, or
probed), the image built from this checkout, and containers and volumes that are removed after
each test. Only the `docker` command line is used, as a user would.

`.ci/run` exports INBOUND_TEST_DOCKER=1 (with _CLI and _BASE) when `.ci/container-build.sh`
brought an engine up: then every problem is a failure. INBOUND_TEST_DOCKER=0 means it could
not (it said so loudly): the tests skip with its reason. Unset, an engine is probed; none is a
skip on a developer's machine and a failure under CI=true.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import boto3
import pytest

from tests.conftest import ROOT
from tests.unavailable import unavailable

T = TypeVar("T")
# The images a session built, for the summary line that gives their size and build time.
BUILT = pytest.StashKey[list["Image"]]()
# What .ci/container-build.sh makes from Debian packages (no registry needed).
LOCAL_PYTHON = "local/python:bookworm"
LOCAL_DEBIAN = "local/debian:bookworm"
BUILD_TIMEOUT = 900.0
DEADLINE = 30.0
LABEL = "inbound.test=container"
TITLE = "org.opencontainers.image.title=inbound"  # the Dockerfile's LABEL  # `docker ps -a --filter label=inbound.test` finds leftovers


def wait_for(check: Callable[[], T | None], what: str, deadline: float = DEADLINE) -> T:
    """Poll `check` until it returns something true."""
    end = time.monotonic() + deadline
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {deadline:g} s waiting for {what}")
        time.sleep(0.1)


def moto_client(service: str, endpoint: str) -> Any:
    """A boto3 client of `service` on the moto server at `endpoint` (any credentials do)."""
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - moto accepts any
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Docker:
    cli: str

    def __call__(
        self, *args: str, timeout: float = 60.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.cli, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}"
            )
        return done

    def has_image(self, name: str) -> bool:
        return self("image", "inspect", name, check=False).returncode == 0


def engine() -> Docker:
    said = os.environ.get("INBOUND_TEST_DOCKER")
    if said == "0":
        why = os.environ.get("INBOUND_TEST_DOCKER_REASON", "no reason given")
        unavailable(f".ci/run could not start a Docker engine: {why}")
    # Debian's client first: /usr/local/bin/docker may be a newer client without buildx.
    cli = os.environ.get("INBOUND_TEST_DOCKER_CLI") or (
        "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker")
    )
    if cli is None:
        unavailable("no docker client (bash .ci/container-build.sh ensure installs and starts one)")
    docker = Docker(cli)
    info = docker("version", "--format", "{{.Server.Version}}", check=False, timeout=30)
    if info.returncode != 0:
        reason = f"no Docker engine answers {cli}: {info.stderr.strip()[-500:]}"
        if said == "1":
            pytest.fail(f"INBOUND_TEST_DOCKER=1, but {reason}")
        unavailable(reason)
    return docker


@dataclass(frozen=True)
class Image:
    id: str
    name: str
    base: str
    size: int
    build_seconds: float

    def describe(self) -> str:
        return (
            f"container image {self.name} ({self.id[7:19]}): {self.size / 1e6:.0f} MB, "
            f"built in {self.build_seconds:.1f} s on {self.base}"
        )


def build(
    docker: Docker,
    work: Path,
    *,
    tag: str,
    local_base: str,
    base_env: str,
    context: Path = ROOT,
    dockerfile: str = "Dockerfile",
) -> Image:
    """`docker build` with BASE from `base_env`, else the local base .ci/container-build.sh
    made, else the Dockerfile's own default (a registry image)."""
    base = os.environ.get(base_env) or (local_base if docker.has_image(local_base) else "")
    iidfile = work / f"{tag.replace(':', '-').replace('/', '-')}.iid"
    args = ["build", "--network=host", "--iidfile", str(iidfile), "-t", tag]
    args += ["-f", str(context / dockerfile)]
    if base:
        args += ["--build-arg", f"BASE={base}"]
    start = time.monotonic()
    done = docker(*args, str(context), timeout=BUILD_TIMEOUT, check=False)
    seconds = time.monotonic() - start
    if done.returncode != 0:
        raise AssertionError(f"docker build {tag} failed:\n{(done.stdout + done.stderr)[-5000:]}")
    image_id = iidfile.read_text().strip()
    # Earlier builds of the receiver image that lost their tag (an hour old: not another run's
    # current one); the build stage's layers, the cache of the dependencies, have no label.
    docker("image", "prune", "--force", "--filter", f"label={TITLE}", "--filter", "until=1h")
    size = int(docker("image", "inspect", "--format", "{{.Size}}", image_id).stdout)
    return Image(image_id, tag, base or "the Dockerfile's default BASE", size, seconds)


@dataclass
class Container:
    docker: Docker
    name: str

    def logs(self) -> list[dict[str, Any]]:
        """The JSON log lines (the receiver logs to stderr); other lines are left out."""
        done = self.docker("logs", self.name)
        events = []
        for line in (done.stdout + done.stderr).splitlines():
            if line.startswith("{"):
                events.append(json.loads(line))
        return events

    def events(self, event: str, **fields: object) -> list[dict[str, Any]]:
        return [
            e
            for e in self.logs()
            if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        ]

    def wait_event(self, event: str, **fields: object) -> dict[str, Any]:
        return wait_for(lambda: self.events(event, **fields), f"{event} {fields}")[0]

    def inspect(self, template: str) -> str:
        return self.docker("inspect", "--format", template, self.name).stdout.strip()

    def stop_with(self, signal: str) -> int:
        """Send `signal` to the container's PID 1 and wait for it to exit; its exit code."""
        self.docker("kill", "--signal", signal, self.name)
        return int(self.docker("wait", self.name, timeout=DEADLINE).stdout.strip())

    def files(self, path: str = "/var/lib/inbound") -> dict[str, bytes]:
        """Every file under `path` (a volume mounted there too), by path relative to it;
        works on a stopped container."""
        done = subprocess.run(
            [self.docker.cli, "cp", f"{self.name}:{path}", "-"],
            capture_output=True,
            timeout=DEADLINE,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"docker cp {self.name}:{path} failed: {done.stderr!r}")
        found: dict[str, bytes] = {}
        with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
            for member in tar.getmembers():
                handle = tar.extractfile(member) if member.isfile() else None
                if handle is not None:
                    found[member.name.partition("/")[2]] = handle.read()
        return found


@dataclass
class Containers:
    """Starts containers, volumes and networks for one test; removes them all afterwards."""

    docker: Docker
    image: str
    names: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)

    def network(self) -> str:
        name = f"inbound-test-{uuid.uuid4().hex[:10]}"
        self.docker("network", "create", "--label", LABEL, name)
        self.networks.append(name)
        return name

    def volume(self) -> str:
        name = f"inbound-test-{uuid.uuid4().hex[:10]}"
        self.docker("volume", "create", "--label", LABEL, name)
        self.volumes.append(name)
        return name

    def start(self, *args: str, options: tuple[str, ...] = (), image: str = "") -> Container:
        """`docker run -d [options] IMAGE args...` (the receiver's image unless given)."""
        name = f"inbound-test-{uuid.uuid4().hex[:10]}"
        self.names.append(name)
        self.docker(
            "run", "-d", "--name", name, "--label", LABEL, *options, image or self.image, *args
        )
        return Container(self.docker, name)

    def run(self, *args: str, options: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        """`docker run --rm [options] IMAGE args...` to the end."""
        return self.docker(
            "run", "--rm", "--label", LABEL, *options, self.image, *args, check=False
        )

    def remove(self, container: Container) -> None:
        self.docker("rm", "-f", "-v", container.name)
        self.names.remove(container.name)

    def close(self) -> None:
        for name in self.names:
            self.docker("rm", "-f", "-v", name, check=False)
        for name in self.volumes:
            self.docker("volume", "rm", "-f", name, check=False)
        for name in self.networks:
            self.docker("network", "rm", name, check=False)


def containers(docker: Docker, image: Image) -> Iterator[Containers]:
    made = Containers(docker, image.id)
    try:
        yield made
    finally:
        made.close()
