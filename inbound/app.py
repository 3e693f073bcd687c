"""The composition root of `inbound serve`: `build(settings, role)` makes and wires every stage.

This is the only place that knows all stages: rule book, spool, intake (the SMTP session's
policy), scanners, SMTP server, dispatcher, targets, metrics, in one start-up sequence for a
receiver in one process ("single"), the supervisor of `--workers N` and each of its workers
(`inbound.workers` keeps the processes, pipes and shared counters). It installs no signal
handler and starts no process: `inbound.cli.serve` does both, and calls `reload` and `stop`.
"""

from __future__ import annotations

import asyncio
import fcntl
import importlib
import logging
import os
import shutil
import socket
import ssl
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from inbound.actions import BounceAction
from inbound.core.errors import InputError
from inbound.core.message import MimeLimits
from inbound.core.services import Services
from inbound.datadir import append_file, make_dir, protect
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
from inbound.receive.limits import ReceiverLimits
from inbound.receive.proxy import ProxyTrust
from inbound.receive.server import SmtpServer
from inbound.rules.book import RuleBook
from inbound.rules.load import environment_issues, load_rule_set
from inbound.rules.srs_relay import srs_keys_for
from inbound.running import AcceptSignals, App, Receiving, Role
from inbound.scan.clamd import ClamdScanner
from inbound.scan.dns import DnsPythonResolver, Resolver, ZoneResolver
from inbound.scan.run import Scanners
from inbound.scan.spamd import SpamdScanner
from inbound.schedule import Scheduler
from inbound.ses.rulesets import connection_issues
from inbound.spool.commit import GroupCommitter
from inbound.spool.retry import RetryPolicy
from inbound.spool.s3 import S3Committer, S3Spool, S3Writer
from inbound.spool.store import Spool, SpoolWriter
from inbound.srs import SrsKeys
from inbound.targets.aws import NO_REGION, AwsTargets, SesOutbound, aws_session
from inbound.targets.http import WebhookHttp
from inbound.targets.local import LambdaFunction, LocalOutbox, LocalTargets
from inbound.targets.relay import RelayMailer, RelayOutbound, RelaySender
from inbound.tls import load_tls_context, self_signed_context

log = logging.getLogger("inbound.app")


@dataclass(frozen=True)
class ServeSettings:
    rules: Path
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 2525
    hostname: str = "localhost"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_self_signed: bool = False
    lambdas: Mapping[str, str] = field(default_factory=dict)
    metrics: tuple[str, int] | None = None
    limits: ReceiverLimits = field(default_factory=ReceiverLimits)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    domains: tuple[str, ...] = ()
    # How long SIGTERM waits for the SMTP sessions in flight.
    drain_timeout: float = 30.0
    clamd: str | None = None
    spamd: str | None = None
    scan_timeout: float = 30.0
    # How far below spamd's threshold a score is GRAY rather than PASS.
    spam_gray_band: float = 2.0
    dns_timeout: float = 5.0
    # Answer DNS from these zone files instead of the network (tests, air-gapped setups).
    dns_zones: tuple[Path, ...] = ()
    targets: Literal["local", "aws"] = "local"
    # What an SNS action does with a message over 150 KB (SES bounces it).
    sns_oversize: Literal["bounce", "omit-content"] = "bounce"
    relay: tuple[str, int] | None = None
    # Receiving processes; more than one: a supervisor dispatches (inbound/workers.py).
    workers: int = 1
    # How far the attachment walk goes (--max-mime-parts, --max-mime-depth).
    mime_limits: MimeLimits = field(default_factory=MimeLimits)
    # The log's format on stderr: JSON lines, or text lines for a terminal (--log-format).
    log_format: Literal["json", "text"] = "json"
    # CA certificates trusted for webhook HTTPS besides the system store (--webhook-ca).
    webhook_ca: Path | None = None
    # `--spool s3://BUCKET/PREFIX --queue URL`: no local spool, no dispatch (SPEC section 7b).
    s3_spool: S3Spool | None = None
    # Balancers whose connections start with a PROXY v1/v2 header (--proxy-protocol).
    proxy_protocol: ProxyTrust | None = None


def load_functions(mapping: Mapping[str, str]) -> dict[str, LambdaFunction]:
    """`NAME=module:function` flags to callables; a bad one is an `InputError`."""
    functions: dict[str, LambdaFunction] = {}
    for name, target in mapping.items():
        module_name, _, attribute = target.partition(":")
        if not module_name or not attribute:
            raise InputError(f"--lambda {name}={target}: expected NAME=module:function")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise InputError(
                f"--lambda {name}={target}: cannot import {module_name}: {exc}"
            ) from None
        function = getattr(module, attribute, None)
        if not callable(function):
            raise InputError(f"--lambda {name}={target}: {module_name} has no function {attribute}")
        functions[name] = function
    return functions


def announce_missing_scanners(settings: ServeSettings, book: RuleBook) -> None:
    """Rules that ask for spam and virus scans while no scanner is configured: say so at
    start (their messages get PROCESSING_FAILED verdicts, SPEC section 2)."""
    scanning = [r.name for r in book.current.compiled.rules if r.scan_enabled and r.enabled]
    flags = (("--clamd", settings.clamd), ("--spamd", settings.spamd))
    missing = [flag for flag, value in flags if not value]
    if scanning and missing:
        emit(
            log,
            "scanners.missing",
            level=logging.WARNING,
            rules=scanning,
            missing=missing,
            hint="these rules' messages get PROCESSING_FAILED spam/virus verdicts",
        )


def announce_hostname(settings: ServeSettings) -> None:
    """A name without a dot is not what an MX must give in its greeting and trace headers
    (RFC 5321 §4.1.1.1, §4.4: a fully qualified domain name): say so at start."""
    if "." not in settings.hostname.strip("."):
        emit(
            log,
            "hostname.not_qualified",
            level=logging.WARNING,
            hostname=settings.hostname,
            hint="give the name clients know this MX by: --hostname mx.example.com",
        )


def build_scanners(settings: ServeSettings, auth_pool: Executor | None = None) -> Scanners:
    """The scanners `--clamd`, `--spamd` and the DNS settings ask for (bad ones: InputError)."""
    resolver: Resolver
    if settings.dns_zones:
        resolver = ZoneResolver.from_files(settings.dns_zones, timeout=settings.dns_timeout)
    else:
        resolver = DnsPythonResolver(settings.dns_timeout)
    return Scanners(
        resolver=resolver,
        virus=ClamdScanner(settings.clamd, timeout=settings.scan_timeout)
        if settings.clamd
        else None,
        spam=SpamdScanner(
            settings.spamd, timeout=settings.scan_timeout, gray_band=settings.spam_gray_band
        )
        if settings.spamd
        else None,
        auth_timeout=settings.dns_timeout * 2,
        auth_executor=auth_pool,
    )


def build_services(settings: ServeSettings, book: RuleBook, *, announce: bool = True) -> Services:
    """The services `--targets` and `--relay` ask for; `announce` logs what is missing.

    `--targets` is the shortcut for the blob store, the topic and the function (local files,
    or AWS); `--relay` chooses the mailer. Code may choose each apart (`Services(...)`)."""
    s = settings
    base: LocalTargets | AwsTargets
    http = WebhookHttp(ca_file=s.webhook_ca)  # the same for both target sets
    if s.targets == "aws":
        session = aws_session()
        if session.region_name is None:  # at start, not as dead letters later
            raise InputError(NO_REGION)
        base = AwsTargets(session=session, http=http)
    else:
        base = LocalTargets(s.data_dir, functions=load_functions(s.lambdas), http=http)
    outbox = LocalOutbox(s.data_dir)
    # `forward` with `via: ses`: SES itself on AWS; locally the outbox, as S3 is files.
    ses_outbound = SesOutbound(base) if isinstance(base, AwsTargets) else outbox
    if s.relay is not None:
        host, port = s.relay
        relay = RelaySender(host, port, local_hostname=s.hostname)
        return Services.of(
            base,
            mailer=RelayMailer(relay),
            outbound=RelayOutbound(relay),
            ses_outbound=ses_outbound,
        )
    bouncing = [
        r.name
        for r in book.current.compiled.rules
        if any(isinstance(a, BounceAction) for a in r.actions)
    ]
    if bouncing and announce:
        emit(
            log,
            "relay.missing",
            level=logging.WARNING,
            rules=bouncing,
            hint="bounces after acceptance need --relay HOST:PORT to send their DSNs",
        )
    # Without a relay, forwards and relayed bounces go to the local outbox (SPEC section 3b).
    return Services.of(base, outbound=outbox, ses_outbound=ses_outbound)


def tls_context(
    settings: ServeSettings, book: RuleBook, *, announce: bool = True
) -> ssl.SSLContext | None:
    """STARTTLS's context from `--tls-cert/--tls-key` or `--tls-self-signed`, else None."""
    s = settings
    if s.tls_cert is not None and s.tls_key is not None:
        return load_tls_context(s.tls_cert, s.tls_key)
    if s.tls_self_signed:
        return self_signed_context(s.data_dir / "tls", s.hostname)
    if announce:
        requiring = [r.name for r in book.current.compiled.rules if r.require_tls]
        emit(
            log,
            "tls.disabled",
            level=logging.WARNING,
            hint="no certificate: STARTTLS is not offered; use --tls-cert and --tls-key, "
            "or --tls-self-signed for development",
            rules_requiring_tls=requiring,
        )
    return None


def rule_book(settings: ServeSettings, spool: Spool | S3Committer) -> RuleBook:
    """The rules at `--rules`, each version kept in the spool for the messages received under it."""
    return RuleBook(
        settings.rules,
        save_text=spool.save_rules,
        load_text=spool.load_rules,
        extra_domains=settings.domains,
        # What the rules need from the environment (a webhook's secret_env, the SRS secrets of
        # a forward) fails the start (exit 2) or the reload (the old rules stay), not each
        # message.
        check=lambda loaded: (
            environment_issues(loaded, os.environ)
            + (connection_issues(loaded) if settings.s3_spool is not None else [])
        ),
    )


class DataDirInUse(InputError):  # noqa: N818 - read as "the data directory is in use"
    """An `inbound serve` holds the data directory's lock (`inbound spool delete` asks too)."""


def lock_data_dir(data_dir: Path) -> IO[bytes]:
    """One receiver per data directory: two would dispatch the same messages twice."""
    handle = append_file(data_dir / "inbound.lock")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DataDirInUse(
            f"{data_dir}: another inbound serve is using this data directory"
        ) from None
    return handle


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
            spool, book, build_services(s, book), metrics=metrics, sns_oversize=s.sns_oversize
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
