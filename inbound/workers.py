"""`inbound serve --workers N`: N receiving processes and one supervisor that dispatches.

One Python process is bound by its interpreter lock, so a receiver on a machine with more
cores runs its SMTP sessions in worker processes. The process model:

- The supervisor is built by `inbound.app.build(settings, "supervisor")` (rules checked, data
  directory locked, dispatcher), recovers the spool, binds the listening socket and starts the
  workers (spawned, not forked: it runs threads). It runs the dispatcher, the metrics endpoint
  and answers the signals.
- Each worker is built by `build(settings, "worker", ...)`: it serves SMTP sessions on the
  shared socket with its own rule book, scanners and group committer, all writing to the one
  spool. It tells the supervisor each message it queued over a pipe (`q ID` lines, and `r N`
  once it listens). A lost notice only delays that message until the dispatcher's next
  rescan of the spool.
- Connection limits count in shared memory (`SharedConnections`); the workers' metrics go to
  prometheus-client's multiprocess files, which the supervisor's endpoint sums.
- SIGHUP and SIGTERM go to the supervisor, which passes them on (the handlers are installed by
  `inbound.cli.serve`, which also gives the workers' entry point). SIGTERM drains the workers,
  then the dispatcher. A worker that dies is started again, its connections forgotten. If
  the supervisor dies, the workers exit at once (their pipe from it reaches end of file):
  what they acknowledged is in the spool, and what they did not, the client sends again.

This module owns processes, pipes, shared counters and restarts; it builds no stage itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

from inbound.app import WorkerWiring, build
from inbound.core.errors import InboundError
from inbound.core.ids import is_message_id
from inbound.observe.log import capture_asyncio, configure, emit
from inbound.observe.supervise import Backoff
from inbound.receive.connections import SharedConnections
from inbound.receive.server import listening_socket
from inbound.running import AcceptSignals, Receiving
from inbound.settings import ServeSettings

log = logging.getLogger("inbound.workers")

_SPAWN = multiprocessing.get_context("spawn")
# How long a worker may take to listen, and to wait before starting one again.
_START_TIMEOUT = 60.0
_RESTART_DELAY = 1.0
# Exit status of a worker whose supervisor is gone.
_ORPHANED = 70
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_PR_SET_NAME = 15
# The workers of a supervisor that was just killed may hold the port for a moment.
_BIND_PATIENCE = 5.0


@dataclass(frozen=True)
class WorkerArgs:
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


def name_process(name: str) -> None:
    """Linux: the name `ps -o comm`, `top` and `pgrep` show for this process (at most 15
    bytes, so `inbound-w12`, not the spawn command line every worker shares)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def run_worker(args: WorkerArgs, accept_signals: AcceptSignals) -> None:
    """A worker process's life (its entry point, in `inbound.cli.serve`, calls this); it logs
    JSON lines only, whatever happens."""
    _die_with_parent()
    name_process(f"inbound-w{args.index}")
    configure(context={"worker": args.index}, text=args.settings.log_format == "text")
    try:
        asyncio.run(_Worker(args).run(accept_signals))
    except InboundError as exc:  # e.g. rules that changed on disk between checks
        emit(log, "worker.failed", level=logging.ERROR, error=str(exc))
        raise SystemExit(2) from None
    except Exception as exc:  # a bug: the supervisor logs the exit and starts another
        emit(log, "worker.failed", level=logging.ERROR, error_type=type(exc).__name__)
        raise SystemExit(1) from None


class _Worker:
    def __init__(self, args: WorkerArgs) -> None:
        self.args = args
        wiring = WorkerWiring(
            metrics_dir=args.metrics_dir,
            on_queued=self._queued,
            connections=args.connections.for_worker(args.index),
            sock=args.sock,
        )
        self.app = build(args.settings, "worker", wiring)
        assert self.app.receiving is not None
        self.receiving: Receiving = self.app.receiving
        self.stopping = asyncio.Event()
        self._notices = args.notices.fileno()
        os.set_blocking(self._notices, False)

    def reload(self) -> None:
        # The supervisor reloads too and logs the new rules' warnings once for all.
        self.app.reload(announce=False)

    def stop(self) -> None:
        self.stopping.set()

    def _tell(self, line: str) -> None:
        with contextlib.suppress(OSError):  # a full pipe: the dispatcher's rescan finds it
            os.write(self._notices, line.encode())

    def _queued(self, message_id: str) -> None:
        self._tell(f"q {message_id}\n")

    def _orphaned(self) -> None:
        emit(log, "worker.orphaned", level=logging.ERROR)
        os._exit(_ORPHANED)  # as if killed with the supervisor: nothing unacknowledged is kept

    async def run(self, accept_signals: AcceptSignals) -> None:
        loop = asyncio.get_running_loop()
        capture_asyncio(loop)
        accept_signals(self)
        loop.add_reader(self.args.lifeline.fileno(), self._orphaned)
        await self.receiving.start()
        self._tell(f"r {self.args.index}\n")
        await self.stopping.wait()
        emit(log, "worker.stopped", drained=await self.receiving.drain())


# --- the supervisor -------------------------------------------------------------------------


class Supervisor:
    """A running `inbound serve --workers N`."""

    def __init__(self, settings: ServeSettings, worker_main: Callable[[WorkerArgs], None]) -> None:
        """`worker_main`: a worker process's entry point, a module-level function (spawn
        pickles it by name) that calls `run_worker`."""
        self.settings = settings
        self.worker_main = worker_main
        # Bad rules, certificates and flags are reported before anything starts.
        self.app = build(settings, "supervisor")
        assert self.app.run_dir is not None
        # None with `--spool s3://`: the workers' messages go to SQS, not to this dispatcher.
        self.scheduler = self.app.scheduler
        self.run_dir = self.app.run_dir
        self.metrics_dir = self.run_dir / "metrics"
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
        args = WorkerArgs(
            self.settings,
            index,
            self.metrics_dir,
            self.connections,
            self.sock,
            self._notices_out,
            self._lifeline_in,
        )
        name = f"inbound-worker-{index}"
        process = _SPAWN.Process(target=self.worker_main, args=(args,), name=name)
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
            if kind == "q" and is_message_id(value) and self.scheduler is not None:
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

    def stop(self) -> None:
        self.stopping.set()

    async def run(self, accept_signals: AcceptSignals | None = None) -> None:
        """Serve until `stop`; then drain the workers, then the dispatcher. Signals are
        accepted once every worker runs (a SIGHUP passed on earlier would kill a worker
        that has no handler yet)."""
        name_process("inbound-super")  # the workers it starts are inbound-w0, inbound-w1...
        loop = asyncio.get_running_loop()
        capture_asyncio(loop)
        recovered, queued = self.app.resume()
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
        if accept_signals is not None:
            accept_signals(self)
        self.app.announce(self.port, recovered, queued, workers=self.settings.workers)
        dispatch_stop = asyncio.Event()
        dispatching = self.app.dispatch(dispatch_stop)
        await self.stopping.wait()
        emit(log, "server.stopping")
        drained = await self._stop_workers()
        self._read_notices()  # the last messages the workers queued
        dispatch_stop.set()
        await dispatching
        self._close()
        emit(log, "server.stopped", drained=drained)

    def reload(self) -> None:
        self.app.reload()
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
        self.app.close()
