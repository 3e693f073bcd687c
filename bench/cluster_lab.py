"""The laboratory of `bench/cluster.py`: its own moto server, the AWS resources of one run, the
processes it starts (receivers, consumers, smtp-source) and their CPU time from /proc.

Every process is started in a session of its own (`start_new_session`), so stopping one is
`killpg` of its own group, never a name; `Lab.close` stops them all however the run ends.
CPU time is user + system clock ticks of a process tree read from `/proc/PID/stat`, the live
processes' own and the reaped children's (cutime, cstime), so a worker process that exited
still counts through its parent. The machine's busy time is `/proc/stat`'s first line.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
START_DEADLINE = 90.0  # seconds for a server to start on two shared cores
REGION = "us-east-1"
EVENT = b'"event": "'  # how an inbound JSON log line names its event


# -- CPU time from /proc ---------------------------------------------------------------------


def _processes() -> dict[int, tuple[int, int]]:
    """Every process now: PID -> (parent PID, user + system ticks incl. reaped children)."""
    found: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:  # it exited meanwhile
            continue
        # The command name (field 2) may hold spaces and parentheses: split after the last ")".
        fields = text[text.rindex(")") + 2 :].split()
        found[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
    return found


def tree_ticks(roots: Iterable[int]) -> dict[int, int]:
    """Per root PID, the CPU ticks of its process tree (0 for one that is gone)."""
    processes = _processes()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in processes.items():
        children.setdefault(parent, []).append(pid)
    totals: dict[int, int] = {}
    for root in roots:
        total, queue = 0, [root]
        while queue:
            pid = queue.pop()
            total += processes.get(pid, (0, 0))[1]
            queue += children.get(pid, [])
        totals[root] = total
    return totals


def machine_ticks() -> int:
    """Busy ticks of all cores together since boot (everything but idle and iowait)."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return user + nice + system + irq + softirq + steal


def settle(pids: list[int], quiet: float = 0.02, deadline: float = 30.0) -> None:
    """Until the trees of `pids` together used under `quiet` of a core for 0.5 s."""
    end = time.monotonic() + deadline
    before = sum(tree_ticks(pids).values())
    while time.monotonic() < end:
        time.sleep(0.5)
        after = sum(tree_ticks(pids).values())
        if after - before <= TICKS * quiet + 1:
            return
        before = after


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Child:
    """A process this run started, with its log (stdout and stderr)."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    port: int = 0
    _offset: int = 0
    _counts: dict[str, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def count(self, *events: str) -> dict[str, int]:
        """How many JSON log lines of each event so far (reads only what is new)."""
        with self.log.open("rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            start = line.find(EVENT)
            if start >= 0:
                start += len(EVENT)
                name = line[start : line.find(b'"', start)].decode(errors="replace")
                self._counts[name] = self._counts.get(name, 0) + 1
        return {event: self._counts.get(event, 0) for event in events}

    def lines(self, event: str) -> list[dict[str, Any]]:
        """Every JSON log line of this event (read again from the start)."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            if f'"event": "{event}"' in line:
                found.append(json.loads(line))
        return found


class Lab:
    """This run's temporary directory and the processes started in it."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.children: list[Child] = []
        self.endpoint = ""

    def start(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> Child:
        log = self.work / f"{name}.log"
        with log.open("wb") as handle:  # the child has its own descriptor
            process = subprocess.Popen(  # noqa: S603 - our own entry points, fixed arguments
                argv,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=self.work,
                start_new_session=True,
            )
        child = Child(name, process, log)
        self.children.append(child)
        return child

    def stop(self, child: Child, grace: float = 5.0) -> None:
        """TERM the child's process group, KILL it after `grace` seconds."""
        if child.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
            try:
                child.process.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.process.wait()
        with contextlib.suppress(ProcessLookupError):  # anything the child left in its group
            os.killpg(child.pid, signal.SIGKILL)
        if child in self.children:
            self.children.remove(child)

    def close(self) -> None:
        for child in list(self.children):
            self.stop(child, grace=2.0)

    # -- moto ----------------------------------------------------------------------------------

    def start_moto(self, name: str) -> Child:
        """A moto server of this run's own (not a shared one: its CPU is measured)."""
        port = free_port()
        moto = self.start(
            name, [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        )
        self.endpoint = f"http://127.0.0.1:{port}"
        end = time.monotonic() + START_DEADLINE
        while True:
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2):  # noqa: S310
                    break
            except OSError:
                if moto.process.poll() is not None or time.monotonic() > end:
                    tail = moto.log.read_text()[-2000:]
                    raise SystemExit(f"moto server did not start: {tail}") from None
                time.sleep(0.2)
        moto.port = port
        return moto

    def aws_env(self) -> dict[str, str]:
        """The environment of every child: only the standard AWS settings, pointing at moto,
        nothing of the developer's AWS configuration; this tree's `inbound` first."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "INBOUND_SES_", "INBOUND_RULES"))
        }
        env.update(
            PYTHONPATH=str(ROOT),
            AWS_ENDPOINT_URL=self.endpoint,
            AWS_REGION=REGION,
            AWS_DEFAULT_REGION=REGION,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",  # noqa: S106 - moto's, not a secret
            AWS_CONFIG_FILE=str(self.work / "no-aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(self.work / "no-aws-credentials"),
        )
        return env

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 - moto's, not a secret
        )


@dataclass(frozen=True)
class Resources:
    """One row's AWS side: the spool bucket, the notification queue, the S3 action's
    (versioned) bucket and the SNS action's topic with a queue subscribed to it."""

    spool: str
    queue: str
    out: str
    topic: str
    topic_queue: str


def create_resources(lab: Lab) -> Resources:
    s3, sqs, sns = lab.client("s3"), lab.client("sqs"), lab.client("sns")
    tag = uuid.uuid4().hex[:8]
    spool, out = f"spool-{tag}", f"out-{tag}"
    s3.create_bucket(Bucket=spool)
    s3.create_bucket(Bucket=out)
    s3.put_bucket_versioning(Bucket=out, VersioningConfiguration={"Status": "Enabled"})
    queue = sqs.create_queue(QueueName=f"received-{tag}")["QueueUrl"]
    topic_queue = sqs.create_queue(QueueName=f"published-{tag}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=topic_queue, AttributeNames=["QueueArn"])
    topic = sns.create_topic(Name=f"topic-{tag}")["TopicArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn["Attributes"]["QueueArn"])
    return Resources(spool, queue, out, topic, topic_queue)
