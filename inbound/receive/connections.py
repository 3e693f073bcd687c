"""Connections in total and per client IP, and the live sessions a shutdown must reach.

With `--workers`, every receiving process admits connections against one table in shared
memory (`SharedConnections`), so the limits hold for the server as a whole. A process short
of file descriptors (`Crowding`) refuses new connections too, before its table is full.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import zlib
from collections import Counter
from collections.abc import Iterator
from ctypes import Array, c_int32
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Protocol

from inbound.receive.limits import ReceiverLimits

# Client IPs are counted in this many hashed slots per worker. Two IPs in one slot share a
# count: with fewer active clients than slots that is rare, and it can only refuse early (a
# temporary 421), never admit past a limit.
_SLOTS = 1 << 16
_ROW = _SLOTS + 1  # the worker's total, then its slots


class Session(Protocol):
    def shut_down(self) -> None: ...


class Crowding(Protocol):
    """Whether this process should refuse new connections for want of resources (descriptors),
    given how many connections it holds."""

    def crowded(self, connections: int) -> bool: ...


@dataclass(frozen=True)
class SharedConnections:
    """One row per worker process: its total and its counts per client IP slot.

    The table is shared memory; a lock file (flock) makes each admission atomic across the
    processes (a semaphore would be left behind, and warned about, by a killed supervisor).
    Each worker writes only its own row, so the supervisor can clear the row of a worker that
    died without releasing its connections.
    """

    table: Array[c_int32]
    lock_path: Path
    row: int = 0

    @classmethod
    def create(cls, workers: int, context: SpawnContext, lock_path: Path) -> SharedConnections:
        lock_path.touch(mode=0o600)  # in the data directory: private (SPEC section 7, Files)
        return cls(context.RawArray(c_int32, workers * _ROW), lock_path)

    def for_worker(self, row: int) -> SharedConnections:
        return SharedConnections(self.table, self.lock_path, row)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Array[c_int32]]:
        with self.lock_path.open("rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield self.table  # the lock goes with the file's closing

    def admit(self, ip: str, limits: ReceiverLimits) -> bool:
        slot = 1 + zlib.crc32(ip.encode()) % _SLOTS
        with self._locked() as counts:
            rows = range(0, len(counts), _ROW)
            if sum(counts[r] for r in rows) >= limits.max_connections:
                return False
            if sum(counts[r + slot] for r in rows) >= limits.max_connections_per_ip:
                return False
            mine = self.row * _ROW
            counts[mine] += 1
            counts[mine + slot] += 1
        return True

    def release(self, ip: str) -> None:
        # Without the lock: only this worker writes its row (the supervisor clears it once the
        # worker is gone), and a release must not fail for want of a descriptor to lock with,
        # or the count would stay taken for good.
        slot = 1 + zlib.crc32(ip.encode()) % _SLOTS
        counts, mine = self.table, self.row * _ROW
        counts[mine] = max(0, counts[mine] - 1)
        counts[mine + slot] = max(0, counts[mine + slot] - 1)

    def clear(self) -> None:
        """Forget this row's connections (its worker has exited)."""
        with self._locked() as counts:
            size = ctypes.sizeof(c_int32)
            ctypes.memset(ctypes.addressof(counts) + self.row * _ROW * size, 0, _ROW * size)


@dataclass
class ConnectionCounter:
    """Connections in total and per client IP, shared by all sessions of one server."""

    total: int = 0
    per_ip: Counter[str] = field(default_factory=Counter)
    # The live sessions, so that a shutdown can reach them.
    sessions: set[Session] = field(default_factory=set)
    # The other worker processes' connections count too (`--workers`).
    shared: SharedConnections | None = None
    crowding: Crowding | None = None

    def admit(self, ip: str, limits: ReceiverLimits) -> bool:
        if self.crowding is not None and self.crowding.crowded(self.total):
            return False
        if self.shared is not None:
            if not self.shared.admit(ip, limits):
                return False
        elif (
            self.total >= limits.max_connections or self.per_ip[ip] >= limits.max_connections_per_ip
        ):
            return False
        self.total += 1
        self.per_ip[ip] += 1
        return True

    def release(self, ip: str) -> None:
        if self.shared is not None:
            self.shared.release(ip)
        self.total -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]
