"""The composition root of `inbound serve`: `build(settings, role)` makes and wires every stage.

This is the only place that knows all stages: rule book, spool, intake (the SMTP session's
policy), scanners, SMTP server, dispatcher, targets, metrics, in one start-up sequence for a
receiver in one process ("single"), the supervisor of `--workers N` and each of its workers
(`inbound.workers` keeps the processes, pipes and shared counters). It installs no signal
handler and starts no process: `inbound.cli.serve` does both, and calls `reload` and `stop`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from inbound.datadir import make_dir, protect
from inbound.descriptors import DescriptorGauge
from inbound.dispatch import Dispatcher
from inbound.intake import Intake
from inbound.observe.log import capture_asyncio, emit
from inbound.observe.metrics import (
    DispatchMetrics,
    Metrics,
    ReceiveMetrics,
    supervisor_metrics,
    worker_metrics,
)
from inbound.receive.connections import ConnectionCounter, SharedConnections
from inbound.receive.server import SmtpServer
from inbound.rules.book import RuleBook
from inbound.rules.load import load_rule_set
from inbound.rules.srs_relay import srs_keys_for
from inbound.running import AcceptSignals, App, Receiving, Role
from inbound.scan.run import Scanners
from inbound.schedule import Scheduler
from inbound.settings import ServeSettings
from inbound.spool.commit import GroupCommitter
from inbound.spool.s3 import S3Committer, S3Writer
from inbound.spool.store import Spool, SpoolWriter
from inbound.srs import SrsKeys
from inbound.stages import (
    announce_hostname,
    announce_missing_scanners,
    build_scanners,
    build_services,
    lock_data_dir,
    rule_book,
    tls_context,
)

log = logging.getLogger("inbound.app")


@dataclass(frozen=True)
class WorkerWiring:
    """What a worker process is given by its supervisor (`inbound.workers`)."""

    metrics_dir: Path  # the workers' metric files, summed by the supervisor's endpoint
    on_queued: Callable[[str], None]  # tells the supervisor's dispatcher
    connections: SharedConnections  # this worker's row of the shared connection counts
    sock: socket.socket  # the listening socket every worker accepts on


def build(settings: ServeSettings, role: Role, worker: WorkerWiring | None = None) -> App:
    """Every stage of one process of `inbound serve`, in one sequence; bad rules, certificates
    and flags raise before anything starts. A worker needs its `worker` wiring."""
    s = settings
    owner = role != "worker"  # the process that owns the data directory and dispatches
    lock = run_dir = None
    if owner:
        # Bad rules (and a forward without its SRS secrets) are reported before anything is
        # created on disk.
        srs_keys_for(load_rule_set(s.rules, extra_domains=s.domains).rule_set, os.environ)
        protect(s.data_dir)
        lock = lock_data_dir(s.data_dir)
    spool, s3, book = storage(s, owner=owner)
    srs_keys = srs_keys_for(book.current.compiled.model, os.environ)
    # Checks the certificate (and makes a self-signed one) before any worker starts.
    tls = tls_context(s, book, announce=owner)
    if owner:
        announce_hostname(s)
        announce_missing_scanners(s, book)
    metrics: Metrics | DispatchMetrics | ReceiveMetrics
    if role == "single":
        metrics = Metrics()
    elif role == "supervisor":
        # Files the processes share while they run: the workers' metrics, the connections
        # lock. In the data directory (known to be writable, and ours while we hold its lock),
        # made anew: counts of an earlier run must not be summed into this one's.
        run_dir = s.data_dir / "run"
        shutil.rmtree(run_dir, ignore_errors=True)
        make_dir(run_dir)
        make_dir(run_dir / "metrics")
        metrics = supervisor_metrics(run_dir / "metrics")
    else:
        assert worker is not None, "a worker is built with its wiring"
        metrics = worker_metrics(worker.metrics_dir)
    dispatcher = scheduler = None
    on_queued: Callable[[str], None] | None = None
    if isinstance(metrics, DispatchMetrics) and spool is not None:
        dispatcher = Dispatcher(
            spool,
            book,
            build_services(s, book),
            metrics=metrics,
            sns_oversize=s.sns_oversize,
            mime_limits=s.mime_limits,
        )
        scheduler = Scheduler(spool, dispatcher.process, metrics=metrics, policy=s.retry)
        on_queued = scheduler.notify
    if worker is not None and s3 is None:
        on_queued = worker.on_queued
    receiving = None
    if isinstance(metrics, ReceiveMetrics):
        auth_pool = ThreadPoolExecutor(8, thread_name_prefix="inbound-auth")
        scanners = build_scanners(s, auth_pool)
        intake, committer = build_intake(
            s,
            book,
            scanners,
            metrics=metrics,
            srs_keys=srs_keys,
            stores=(spool, s3),
            on_queued=on_queued,
        )
        server = SmtpServer(
            intake,
            host=s.host,
            port=s.port,
            hostname=s.hostname,
            limits=s.limits,
            tls_context=tls,
            counter=ConnectionCounter(
                shared=None if worker is None else worker.connections, crowding=DescriptorGauge()
            ),
            sock=None if worker is None else worker.sock,
            proxies=s.proxy_protocol,
        )
        receiving = Receiving(server, intake, committer, auth_pool, drain_timeout=s.drain_timeout)
    served = metrics if isinstance(metrics, DispatchMetrics) else None
    return App(s, role, spool, book, tls, served, dispatcher, scheduler, receiving, lock, run_dir)


def storage(s: ServeSettings, *, owner: bool) -> tuple[Spool | None, S3Committer | None, RuleBook]:
    """The local spool, or with `--spool s3://` the S3 committer (a receiver that keeps no
    state: messages to S3 and SQS, the consumers run them); the rule book kept by either."""
    if s.s3_spool is None:
        spool = Spool(s.data_dir / "spool")
        return spool, None, rule_book(s, spool)
    s3 = S3Committer(s.s3_spool, s.data_dir / "s3-tmp", timeout=s.limits.data_timeout)
    if owner:
        s3.recover()
    return None, s3, rule_book(s, s3)


def build_intake(
    s: ServeSettings,
    book: RuleBook,
    scanners: Scanners,
    *,
    metrics: ReceiveMetrics,
    srs_keys: SrsKeys | None,
    stores: tuple[Spool | None, S3Committer | None],
    on_queued: Callable[[str], None] | None,
) -> tuple[Intake[SpoolWriter] | Intake[S3Writer], GroupCommitter | S3Committer]:
    """The SMTP sessions' policy and the committer it stores messages through."""
    spool, s3 = stores
    if s3 is not None:
        intake = Intake(
            book,
            s3,
            scanners,
            hostname=s.hostname,
            metrics=metrics,
            on_queued=_queued_in_sqs,
            mime_limits=s.mime_limits,
            srs_keys=srs_keys,
        )
        return intake, s3
    assert spool is not None, "without --spool s3:// there is a local spool"
    assert on_queued is not None, "received messages are told to a dispatcher"
    committer = GroupCommitter(spool)
    local = Intake(
        book,
        committer,
        scanners,
        hostname=s.hostname,
        metrics=metrics,
        on_queued=on_queued,
        mime_limits=s.mime_limits,
        srs_keys=srs_keys,
    )
    return local, committer


def _queued_in_sqs(message_id: str) -> None:
    """`--spool s3://`: the notification in the queue is the consumers' news of a message."""


class Receiver:
    """A running `inbound serve` in one process: it receives and dispatches."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.app = build(settings, "single")
        assert self.app.receiving is not None
        self.receiving = self.app.receiving
        self.server = self.receiving.server
        # None with `--spool s3://` (the consumers run the actions).
        self.dispatcher = self.app.dispatcher
        self.scheduler = self.app.scheduler
        self.stopping = asyncio.Event()
        self._resumed = (0, 0)  # (discarded, queued) at start

    def reload(self) -> None:
        self.app.reload()

    def stop(self) -> None:
        self.stopping.set()

    async def run(self, accept_signals: AcceptSignals | None = None) -> None:
        """Serve until `stop`; then drain and return."""
        capture_asyncio(asyncio.get_running_loop())
        if accept_signals is not None:
            accept_signals(self)
        await self.start()
        await self.serve()

    async def start(self) -> None:
        """Resume the spool and listen."""
        self._resumed = self.app.resume()
        await self.receiving.start()

    async def serve(self) -> None:
        """Announce, dispatch until `stop`, then drain the sessions and the dispatcher."""
        self.app.announce(self.server.port, *self._resumed)
        dispatching = self.app.dispatch(self.stopping)
        await self.stopping.wait()
        emit(log, "server.stopping")
        drained = await self.receiving.drain()
        await dispatching
        emit(log, "server.stopped", drained=drained)
        self.app.close()
