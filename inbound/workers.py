"""`inbound serve --workers N`: N receiving processes and one supervisor that dispatches.

One Python process is bound by its interpreter lock, so a receiver on a machine with more
cores runs its SMTP sessions in worker processes. The process model:

- The supervisor checks the rules, locks the data directory, recovers the spool, binds the
  listening socket and starts the workers (spawned, not forked: it runs threads). It runs
  the dispatcher, the metrics endpoint and the signals.
- Each worker serves SMTP sessions on the shared socket with its own rule book, scanners and
  group committer, all writing to the one spool. It tells the supervisor each message it
  queued over a pipe (`q ID` lines, and `r N` once it listens). A lost notice only delays
  that message until the dispatcher's next rescan of the spool.
- Connection limits count in shared memory (`SharedConnections`); the workers' metrics go to
  prometheus-client's multiprocess files, which the supervisor's endpoint sums.
- SIGHUP and SIGTERM go to the supervisor, which passes them on. SIGTERM drains the workers,
  then the dispatcher. A worker that dies is started again, its connections forgotten. If
  the supervisor dies, the workers exit at once (their pipe from it reaches end of file):
  what they acknowledged is in the spool, and what they did not, the client sends again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

from inbound.app import (
    Receiving,
    ServeSettings,
    announce_missing_scanners,
    build_targets,
    lock_data_dir,
    reload_rules,
    rule_book,
    tls_context,
)
from inbound.core.errors import InboundError
from inbound.core.ids import is_message_id
from inbound.datadir import make_dir, protect
from inbound.descriptors import DescriptorGauge, ensure_limit
from inbound.dispatch import Dispatcher
from inbound.observe.log import capture_asyncio, configure, emit
from inbound.observe.metrics import supervisor_metrics, worker_metrics
from inbound.observe.supervise import Backoff, supervise
from inbound.receive.connections import ConnectionCounter, SharedConnections
from inbound.receive.server import listening_socket
from inbound.rules.load import load_rule_set
from inbound.schedule import Scheduler
from inbound.spool.store import Spool

log = logging.getLogger("inbound.workers")

_SPAWN = multiprocessing.get_context("spawn")
# How long a worker may take to listen, and to wait before starting one again.
_START_TIMEOUT = 60.0
_RESTART_DELAY = 1.0
# Exit status of a worker whose supervisor is gone.
_ORPHANED = 70
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# The workers of a supervisor that was just killed may hold the port for a moment.
_BIND_PATIENCE = 5.0


@dataclass(frozen=True)
class _WorkerArgs:
    """Everything a worker process is started with (pickled by multiprocessing)."""

    settings: ServeSettings
    index: int
    metrics_dir: Path
    connections: SharedConnections
    sock: socket.socket
    notices: Connection  # the write end: `q ID` and `r N` lines
    lifeline: Connection  # the read end of a pipe the supervisor never writes to


# --- a worker -------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when its supervisor dies (the lifeline pipe is the
    portable way, but needs this process's event loop to notice)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _worker_main(args: _WorkerArgs) -> None:
    """The entry point of a worker process; it logs JSON lines only, whatever happens."""
    _die_with_parent()
    # Ctrl-C reaches every process of the terminal's group: the supervisor alone answers it,
    # with a SIGTERM to each worker once they are all running.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure(context={"worker": args.index})
    try:
        asyncio.run(_Worker(args).run())
    except InboundError as exc:  # e.g. rules that changed on disk between checks
        emit(log, "worker.failed", level=logging.ERROR, error=str(exc))
        raise SystemExit(2) from None
    except Exception as exc:  # a bug: the supervisor logs the exit and starts another
        emit(log, "worker.failed", level=logging.ERROR, error_type=type(exc).__name__)
        raise SystemExit(1) from None


class _Worker:
    def __init__(self, args: _WorkerArgs) -> None:
        s = args.settings
        self.args = args
        spool = Spool(s.data_dir / "spool")
        self.book = rule_book(s, spool)
        self.receiving = Receiving(
            s,
            self.book,
            spool,
            worker_metrics(args.metrics_dir),
            on_queued=self._queued,
            tls=tls_context(s, self.book, announce=False),
            counter=ConnectionCounter(
                shared=args.connections.for_worker(args.index), crowding=DescriptorGauge()
            ),
            sock=args.sock,
        )
        self._notices = args.notices.fileno()
        os.set_blocking(self._notices, False)

    def _tell(self, line: str) -> None:
        with contextlib.suppress(OSError):  # a full pipe: the dispatcher's rescan finds it
            os.write(self._notices, line.encode())

    def _queued(self, message_id: str) -> None:
        self._tell(f"q {message_id}\n")

    def _orphaned(self) -> None:
        emit(log, "worker.orphaned", level=logging.ERROR)
        os._exit(_ORPHANED)  # as if killed with the supervisor: nothing unacknowledged is kept

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        capture_asyncio(loop)
        stopping = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, reload_rules, self.book)
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
        loop.add_reader(self.args.lifeline.fileno(), self._orphaned)
        await self.receiving.start()
        self._tell(f"r {self.args.index}\n")
        await stopping.wait()
        emit(log, "worker.stopped", drained=await self.receiving.drain())


# --- the supervisor -------------------------------------------------------------------------


class Supervisor:
    """A running `inbound serve --workers N`."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        # Bad rules, certificates and flags are reported before anything starts.
        load_rule_set(settings.rules, extra_domains=settings.domains)
        protect(settings.data_dir)
        self._lock = lock_data_dir(settings.data_dir)
        self.spool = Spool(settings.data_dir / "spool")
        self.book = rule_book(settings, self.spool)
        # Checks the certificate (and makes a self-signed one) before any worker starts.
        self.tls = tls_context(settings, self.book) is not None
        announce_missing_scanners(settings, self.book)
        # Files the processes share while they run: the workers' metrics, the connections lock.
        # In the data directory (known to be writable, and ours while we hold its lock), made
        # anew: counts of an earlier run must not be summed into this one's.
        self.run_dir = settings.data_dir / "run"
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.metrics_dir = self.run_dir / "metrics"
        make_dir(self.run_dir)
        make_dir(self.metrics_dir)
        self.metrics = supervisor_metrics(self.metrics_dir)
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
        self.connections = SharedConnections.create(
            settings.workers, _SPAWN, self.run_dir / "connections.lock"
        )
        self.sock = listening_socket(settings.host, settings.port, patience=_BIND_PATIENCE)
        self._notices_in, self._notices_out = _SPAWN.Pipe(duplex=False)
        self._lifeline_in, self._lifeline_out = _SPAWN.Pipe(duplex=False)
        os.set_blocking(self._notices_in.fileno(), False)
        self._pending = b""
        self._notices_backoff = Backoff("supervisor.notices", first=0.1, cap=5.0)
        self._restarts: dict[int, Backoff] = {}
        self.workers: dict[int, BaseProcess] = {}
        self._ready: set[int] = set()
        self._ready_changed = asyncio.Event()
        self.stopping = asyncio.Event()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _start_worker(self, index: int) -> None:
        args = _WorkerArgs(
            self.settings,
            index,
            self.metrics_dir,
            self.connections,
            self.sock,
            self._notices_out,
            self._lifeline_in,
        )
        process = _SPAWN.Process(target=_worker_main, args=(args,), name=f"inbound-worker-{index}")
        process.start()
        self.workers[index] = process
        asyncio.get_running_loop().add_reader(process.sentinel, self._exited, index, process)

    def _exited(self, index: int, process: BaseProcess) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(process.sentinel)
        process.join()
        self._ready.discard(index)
        self._ready_changed.set()
        self.connections.for_worker(index).clear()
        if self.stopping.is_set():
            return
        emit(
            log,
            "worker.exited",
            level=logging.ERROR,
            worker=index,
            exit_code=process.exitcode,
            restart_in=_RESTART_DELAY,
        )
        loop.call_later(_RESTART_DELAY, self._restart, index)

    def _restart(self, index: int) -> None:
        if self.stopping.is_set():
            return
        try:
            self._start_worker(index)
        except Exception as exc:  # e.g. no descriptor for its pipes: try again, backed off
            backoff = self._restarts.setdefault(index, Backoff(f"worker.restart.{index}"))
            asyncio.get_running_loop().call_later(backoff.failed(exc), self._restart, index)

    def _read_notices(self) -> None:
        """The notice pipe's reader; it outlives its own failures: one is logged, and reading
        resumes after a backoff (a lost notice waits for the dispatcher's rescan)."""
        try:
            self._take_notices()
        except Exception as exc:
            loop = asyncio.get_running_loop()
            fd = self._notices_in.fileno()
            loop.remove_reader(fd)
            delay = self._notices_backoff.failed(exc)
            loop.call_later(delay, loop.add_reader, fd, self._read_notices)
        else:
            self._notices_backoff.succeeded()

    def _take_notices(self) -> None:
        try:
            data = os.read(self._notices_in.fileno(), 65536)
        except BlockingIOError:
            return
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        for line in lines:
            kind, _, value = line.decode("ascii", "replace").partition(" ")
            if kind == "q" and is_message_id(value):
                self.scheduler.notify(value)
            elif kind == "r" and value.isdigit():
                self._ready.add(int(value))
                if int(value) in self._restarts:
                    self._restarts.pop(int(value)).succeeded()
                self._ready_changed.set()

    async def _wait_ready(self) -> None:
        async with asyncio.timeout(_START_TIMEOUT):
            while len(self._ready) < len(self.workers):
                self._ready_changed.clear()
                await self._ready_changed.wait()
                failed = [i for i, p in self.workers.items() if p.exitcode is not None]
                if failed:
                    raise InboundError(f"worker {failed[0]} exited while starting (see its log)")

    async def run(self) -> None:
        """Serve until SIGTERM or SIGINT; then drain the workers, then the dispatcher."""
        loop = asyncio.get_running_loop()
        capture_asyncio(loop)
        recovered = self.spool.recover()
        queued = self.scheduler.load_queue()
        loop.add_reader(self._notices_in.fileno(), self._read_notices)
        for index in range(self.settings.workers):
            self._start_worker(index)
        try:
            await self._wait_ready()
        except (InboundError, TimeoutError) as exc:
            self.stopping.set()
            await self._stop_workers()
            self._close()
            raise InboundError(f"the workers did not start: {exc}") from None
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        if self.settings.metrics is not None:
            self.metrics.serve(*self.settings.metrics)
        emit(
            log,
            "server.started",
            listen=f"{self.settings.host}:{self.port}",
            data_dir=str(self.settings.data_dir),
            workers=self.settings.workers,
            queued=queued,
            discarded_partial=recovered,
            tls=self.tls,
            rules_digest=self.book.current.digest[:12],
        )
        dispatch_stop = asyncio.Event()
        dispatching = asyncio.create_task(
            supervise("dispatcher", lambda: self.scheduler.run(dispatch_stop), stop=dispatch_stop)
        )
        await self.stopping.wait()
        emit(log, "server.stopping")
        drained = await self._stop_workers()
        self._read_notices()  # the last messages the workers queued
        dispatch_stop.set()
        await dispatching
        self._close()
        emit(log, "server.stopped", drained=drained)

    def reload(self) -> None:
        reload_rules(self.book)
        for process in self.workers.values():
            if process.exitcode is None and process.pid is not None:
                os.kill(process.pid, signal.SIGHUP)

    async def _stop_workers(self) -> bool:
        """SIGTERM to every worker; True when all drained and exited in time."""
        for process in self.workers.values():
            if process.exitcode is None and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + self.settings.drain_timeout + 10
        while any(p.exitcode is None for p in self.workers.values()):
            if asyncio.get_running_loop().time() > deadline:
                for process in self.workers.values():
                    if process.exitcode is None:
                        process.kill()
                        process.join()
                return False
            await asyncio.sleep(0.05)
        return all(p.exitcode == 0 for p in self.workers.values())

    def _close(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._notices_in.fileno())
        for process in self.workers.values():
            loop.remove_reader(process.sentinel)
        self.sock.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self._lock.close()


def serve_with_workers(settings: ServeSettings) -> int:
    ensure_limit(settings.limits.max_connections, settings.workers)
    supervisor = Supervisor(settings)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(supervisor.run())
    return 0
