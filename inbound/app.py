"""The composition root of `inbound serve`: builds every stage from settings and wires them.

This is the only place that knows all stages: rule book, spool, intake (the SMTP session's
policy), SMTP server, dispatcher, targets, metrics. It owns the process lifecycle: SIGHUP
reloads the rules, SIGTERM drains the sessions in flight and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib
import logging
import signal
import socket
import ssl
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from inbound.actions import BounceAction
from inbound.core.errors import ConfigError, InputError
from inbound.core.message import MimeLimits
from inbound.core.targets import Targets
from inbound.datadir import append_file, protect
from inbound.descriptors import DescriptorGauge, ensure_limit
from inbound.dispatch import Dispatcher
from inbound.intake import Intake
from inbound.observe.log import capture_asyncio, emit, emit_fields
from inbound.observe.metrics import Metrics, ReceiveMetrics
from inbound.observe.supervise import supervise
from inbound.receive.connections import ConnectionCounter
from inbound.receive.limits import ReceiverLimits
from inbound.receive.server import SmtpServer
from inbound.rules.book import RuleBook
from inbound.rules.load import load_rule_set
from inbound.scan.clamd import ClamdScanner
from inbound.scan.dns import DnsPythonResolver, Resolver, ZoneResolver
from inbound.scan.run import Scanners
from inbound.scan.spamd import SpamdScanner
from inbound.schedule import Scheduler
from inbound.spool.retry import RetryPolicy
from inbound.spool.store import GroupCommitter, Spool
from inbound.targets.aws import NO_REGION, AwsTargets, aws_session
from inbound.targets.bounces import WithRelay
from inbound.targets.local import LambdaFunction, LocalTargets
from inbound.targets.relay import RelaySender
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


def build_targets(settings: ServeSettings, book: RuleBook, *, announce: bool = True) -> Targets:
    """The target set `--targets` and `--relay` ask for; `announce` logs what is missing."""
    s = settings
    base: Targets
    if s.targets == "aws":
        session = aws_session()
        if session.region_name is None:  # at start, not as dead letters later
            raise InputError(NO_REGION)
        base = AwsTargets(session=session)
    else:
        base = LocalTargets(s.data_dir, functions=load_functions(s.lambdas))
    if s.relay is not None:
        host, port = s.relay
        return WithRelay(base, RelaySender(host, port, local_hostname=s.hostname))
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
    return base


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


def reload_rules(book: RuleBook, context: Mapping[str, object] | None = None) -> None:
    """SIGHUP: the new rules, or the old ones kept and the errors logged (with `context`)."""
    fields = dict(context or {})
    try:
        snapshot = book.reload()
    except ConfigError as exc:
        fields["errors"] = [str(i) for i in exc.issues]
    except InputError as exc:
        fields["errors"] = [str(exc)]
    else:
        emit_fields(log, "rules.reloaded", {"rules_digest": snapshot.digest[:12], **fields})
        return
    emit_fields(log, "rules.reload_failed", fields, level=logging.ERROR)


def rule_book(settings: ServeSettings, spool: Spool) -> RuleBook:
    """The rules at `--rules`, each version kept in the spool for the messages received under it."""
    return RuleBook(
        settings.rules,
        save_text=spool.save_rules,
        load_text=spool.load_rules,
        extra_domains=settings.domains,
    )


class Receiving:
    """The receiving side of one process: the SMTP server, its policy (intake), the scanners'
    threads and the group commit. A receiver has one; with `--workers`, each worker has one."""

    def __init__(
        self,
        settings: ServeSettings,
        book: RuleBook,
        spool: Spool,
        metrics: ReceiveMetrics,
        *,
        on_queued: Callable[[str], None],
        tls: ssl.SSLContext | None,
        counter: ConnectionCounter | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        self.settings = settings
        self.committer = GroupCommitter(spool)
        self.auth_pool = ThreadPoolExecutor(8, thread_name_prefix="inbound-auth")
        self.intake = Intake(
            book,
            spool,
            self.committer,
            build_scanners(settings, self.auth_pool),
            hostname=settings.hostname,
            metrics=metrics,
            on_queued=on_queued,
            mime_limits=settings.mime_limits,
        )
        self.server = SmtpServer(
            self.intake,
            host=settings.host,
            port=settings.port,
            hostname=settings.hostname,
            limits=settings.limits,
            tls_context=tls,
            counter=counter or ConnectionCounter(crowding=DescriptorGauge()),
            sock=sock,
        )

    async def start(self) -> None:
        self.committer.start()
        await self.server.start()

    async def drain(self) -> bool:
        """Stop accepting, let the sessions in flight end (True if all did in time), close."""
        self.server.stop_accepting()
        drained = await self.server.wait_idle(self.settings.drain_timeout)
        self.intake.stop_parsing()  # a walk still running must not hold the exit
        await self.committer.close()
        self.auth_pool.shutdown(wait=False, cancel_futures=True)
        return drained


class Receiver:
    """A running `inbound serve`."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        # Bad rules are reported before anything is created on disk.
        load_rule_set(settings.rules, extra_domains=settings.domains)
        data_dir = settings.data_dir
        protect(data_dir)
        self._lock = lock_data_dir(data_dir)
        self.metrics = Metrics()
        self.spool = Spool(data_dir / "spool")
        self.book = rule_book(settings, self.spool)
        self.tls_context = tls_context(settings, self.book)
        announce_missing_scanners(settings, self.book)
        self.dispatcher = Dispatcher(
            self.spool,
            self.book,
            build_targets(settings, self.book),
            metrics=self.metrics,
            sns_oversize=settings.sns_oversize,
        )
        self.scheduler = Scheduler(
            self.spool, self.dispatcher.process, metrics=self.metrics, policy=settings.retry
        )
        self.receiving = Receiving(
            settings,
            self.book,
            self.spool,
            self.metrics,
            on_queued=self.scheduler.notify,
            tls=self.tls_context,
        )
        self.server = self.receiving.server
        self.stopping = asyncio.Event()

    async def start(self) -> None:
        recovered = self.spool.recover()
        queued = self.scheduler.load_queue()
        await self.receiving.start()
        if self.settings.metrics is not None:
            host, port = self.settings.metrics
            self.metrics.serve(host, port)
        emit(
            log,
            "server.started",
            listen=f"{self.settings.host}:{self.server.port}",
            data_dir=str(self.settings.data_dir),
            queued=queued,
            discarded_partial=recovered,
            tls=self.tls_context is not None,
            rules_digest=self.book.current.digest[:12],
        )

    def reload(self) -> None:
        reload_rules(self.book)

    async def run(self) -> None:
        """Serve until SIGTERM or SIGINT; then drain and return."""
        loop = asyncio.get_running_loop()
        capture_asyncio(loop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        await self.start()
        dispatching = asyncio.create_task(
            supervise("dispatcher", lambda: self.scheduler.run(self.stopping), stop=self.stopping)
        )
        await self.stopping.wait()
        await self.shutdown(dispatching)

    async def shutdown(self, dispatching: asyncio.Task[None] | None = None) -> None:
        emit(log, "server.stopping")
        drained = await self.receiving.drain()
        self.stopping.set()
        if dispatching is not None:
            await dispatching
        emit(log, "server.stopped", drained=drained)
        self._lock.close()


def lock_data_dir(data_dir: Path) -> IO[bytes]:
    """One receiver per data directory: two would dispatch the same messages twice."""
    handle = append_file(data_dir / "inbound.lock")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise InputError(
            f"{data_dir}: another inbound serve is using this data directory"
        ) from None
    return handle


def serve(settings: ServeSettings) -> int:
    ensure_limit(settings.limits.max_connections)
    receiver = Receiver(settings)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(receiver.run())
    return 0
