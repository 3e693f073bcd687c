"""One process of `inbound serve` at run time: its stages as `build` wired them, started,
announced and stopped in the same order whatever its role.

This module owns the lifecycle steps the one-process receiver and the supervisor share (resume
the spool, announce, dispatch, close) and the receiving side's start and drain. It builds
nothing (`inbound.app.build` does), starts no process and installs no signal handler.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal, Protocol

from inbound.core.errors import ConfigError, InputError
from inbound.dispatch import Dispatcher
from inbound.intake import Intake
from inbound.observe.log import emit, emit_fields
from inbound.observe.metrics import DispatchMetrics
from inbound.observe.supervise import supervise
from inbound.receive.server import SmtpServer
from inbound.rules.book import RuleBook, RuleSnapshot
from inbound.schedule import Scheduler
from inbound.spool.commit import GroupCommitter
from inbound.spool.s3 import S3Committer, S3Writer
from inbound.spool.store import Spool, SpoolWriter

if TYPE_CHECKING:
    from inbound.settings import ServeSettings

log = logging.getLogger("inbound.app")

Role = Literal["single", "supervisor", "worker"]


class Controls(Protocol):
    """What a signal can ask of a running server (`inbound.cli.serve` installs the handlers)."""

    def reload(self) -> None: ...

    def stop(self) -> None: ...


# Called by a server once it may take signals: until then, their default action stands.
AcceptSignals = Callable[[Controls], None]


class Receiving:
    """The receiving side of one process: the SMTP server, its policy (intake), the scanners'
    threads and the group commit. A receiver has one; with `--workers`, each worker has one."""

    def __init__(
        self,
        server: SmtpServer,
        intake: Intake[SpoolWriter] | Intake[S3Writer],
        committer: GroupCommitter | S3Committer,
        auth_pool: ThreadPoolExecutor,
        *,
        drain_timeout: float,
    ) -> None:
        self.server = server
        self.intake = intake
        self.committer = committer
        self.auth_pool = auth_pool
        self.drain_timeout = drain_timeout

    async def start(self) -> None:
        self.committer.start()
        await self.server.start()

    async def drain(self) -> bool:
        """Stop accepting, let the sessions in flight end (True if all did in time), close."""
        self.server.stop_accepting()
        drained = await self.server.wait_idle(self.drain_timeout)
        self.intake.stop_parsing()  # a walk still running must not hold the exit
        await self.committer.close()
        self.auth_pool.shutdown(wait=False, cancel_futures=True)
        return drained


@dataclass
class App:
    """The stages of one process, wired; what each role runs is set, the rest is None.

    single: dispatcher and receiving; supervisor: dispatcher (its workers receive);
    worker: receiving (its supervisor dispatches)."""

    settings: ServeSettings
    role: Role
    spool: Spool | None  # None: `--spool s3://`, nothing of the messages is kept here
    book: RuleBook
    tls: ssl.SSLContext | None
    metrics: DispatchMetrics | None  # the registry the metrics endpoint serves
    dispatcher: Dispatcher | None
    # When each queued message runs (with the dispatcher: single and supervisor).
    scheduler: Scheduler | None
    receiving: Receiving | None
    lock: IO[bytes] | None  # the data directory's, held while this process runs
    # Files the processes of `--workers` share while they run (supervisor only).
    run_dir: Path | None = None

    def resume(self) -> tuple[int, int]:
        """Forget what was never acknowledged, schedule what is queued: (discarded, queued)."""
        if self.spool is None:  # `--spool s3://`: the consumers dispatch
            return 0, 0
        assert self.scheduler is not None, "only a dispatching process resumes"
        recovered = self.spool.recover()
        return recovered, self.scheduler.load_queue()

    def announce(self, port: int, recovered: int, queued: int, **extra: object) -> None:
        """Serve the metrics endpoint (if asked for) and log `server.started`."""
        if self.metrics is not None and self.settings.metrics is not None:
            self.metrics.serve(*self.settings.metrics)
        fields = {
            "listen": f"{self.settings.host}:{port}",
            "data_dir": str(self.settings.data_dir),
            **extra,
            "queued": queued,
            "discarded_partial": recovered,
            "tls": self.tls is not None,
            "rules_digest": self.book.current.digest[:12],
        }
        emit_fields(log, "server.started", fields)
        announce_warnings(self.book.current)

    def dispatch(self, stop: asyncio.Event) -> asyncio.Task[None]:
        """The scheduler running the dispatcher, until `stop` is set (restarted, backed off,
        if it fails)."""
        scheduler = self.scheduler
        if scheduler is None and self.spool is None:  # `--spool s3://`: nothing to dispatch
            return asyncio.create_task(_until(stop))
        assert scheduler is not None, "only a dispatching process dispatches"
        return asyncio.create_task(supervise("dispatcher", lambda: scheduler.run(stop), stop=stop))

    def reload(self, *, announce: bool = True) -> None:
        reload_rules(self.book, announce=announce)

    def close(self) -> None:
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if self.lock is not None:
            self.lock.close()


async def _until(stop: asyncio.Event) -> None:
    await stop.wait()


def reload_rules(
    book: RuleBook, context: Mapping[str, object] | None = None, *, announce: bool = True
) -> None:
    """SIGHUP: the new rules, or the old ones kept and the errors logged (with `context`);
    with `announce`, what `inbound check` warns about in the new rules (once per receiver:
    a worker of `--workers` leaves that to its supervisor)."""
    fields = dict(context or {})
    try:
        snapshot = book.reload()
    except ConfigError as exc:
        fields["errors"] = [str(i) for i in exc.issues]
    except InputError as exc:
        fields["errors"] = [str(exc)]
    else:
        emit_fields(log, "rules.reloaded", {"rules_digest": snapshot.digest[:12], **fields})
        if announce:
            announce_warnings(snapshot)
        return
    emit_fields(log, "rules.reload_failed", fields, level=logging.ERROR)


def announce_warnings(snapshot: RuleSnapshot) -> None:
    """What `inbound check` warns about in the rules now in force, one line each: an operator
    who never ran `check` sees them in the log (they do not stop the rules loading)."""
    for warning in snapshot.warnings:
        emit(
            log,
            "rules.warning",
            level=logging.WARNING,
            rules_digest=snapshot.digest[:12],
            warning=warning,
        )
