"""File descriptors of `inbound serve`: the open-file limit it needs, and admission under it.

With the usual soft limit of 1,024 and 1,000 connections, the table filled before
`--max-connections` did: accept() failed, clients hung without a greeting and the
dispatcher's rescan died. So at start the soft limit is raised to the hard one, and the
server refuses to start (exit 2) when `--max-connections` does not fit (SPEC section 7). While
it runs, `DescriptorGauge` refuses new connections (421 4.7.0) while fewer than `HEADROOM`
descriptors are free, whatever took them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import time
from collections.abc import Callable

from inbound.core.errors import InputError
from inbound.observe.log import emit

log = logging.getLogger("inbound.descriptors")

# A session holds its socket and, from DATA to its reply, its spool file; at the end of DATA
# the scans add one more each (clamd's or spamd's socket, or a re-read of the message). More
# scans at once for a moment come out of the reserve, or out of the headroom below.
PER_CONNECTION = 3
# What one process needs whatever its connections (a receiver, a worker, a supervisor):
# ~16 of its own (standard streams, epoll, asyncio's signal pipe, listening sockets, the
# data directory's lock, metrics, worker pipes), ~34 for the group commit (16 sealing threads
# with a file and a directory each, and the commit thread), ~32 for the dispatcher (8 messages
# with their files and a target's connection), ~40 for threads that hold one each for a
# moment (asyncio's default executor, the 8 SPF/DKIM/DMARC threads' DNS sockets) and 100 for
# the connections asyncio accepts in one pass of its loop before any can be refused: 222,
# rounded up.
RESERVE = 256
# While fewer than this are free, new connections get 421 4.7.0 (in the accepting process):
# room for one pass of accepts (100), the group commit and the dispatcher's messages.
HEADROOM = 160
# Each worker process costs the supervisor a few descriptors (its pipes and sentinel).
PER_WORKER = 4


def needed(max_connections: int, workers: int = 1) -> int:
    """Descriptors each process of `inbound serve` needs. With `--workers N`, each worker must
    fit every connection: they are admitted against one shared count, and the kernel may hand
    them all to one worker; the supervisor takes none but keeps `PER_WORKER` per worker."""
    receiving = PER_CONNECTION * max_connections + RESERVE
    supervising = RESERVE + PER_WORKER * workers if workers > 1 else 0
    return max(receiving, supervising)


def raise_limit() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (workers inherit it);
    return (soft, hard) as they are afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        # Linux refuses more than fs.nr_open; macOS more than OPEN_MAX.
        target = _nr_open() or max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):  # ensure_limit says what is missing
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _nr_open() -> int | None:
    try:
        with open("/proc/sys/fs/nr_open", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def ensure_limit(max_connections: int, workers: int = 1) -> int:
    """Raise the limit; an `InputError` saying how to fix it when the connections do not fit.
    Returns the soft limit in effect."""
    soft, hard = raise_limit()
    need = needed(max_connections, workers)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return soft
    fits = max(0, (soft - RESERVE) // PER_CONNECTION)
    raise InputError(
        f"--max-connections {max_connections} needs {need} open files per process "
        f"({PER_CONNECTION} per connection and {RESERVE} in reserve), but the open-file limit "
        f"is {soft} (hard limit {hard}): lower --max-connections to {fits} or less, or raise "
        f"the limit (`ulimit -n {need}` as root, LimitNOFILE={need} in a systemd unit, "
        f"`--ulimit nofile={need}` for docker run)"
    )


def _open_descriptors() -> int | None:
    """How many descriptors this process has open, or None where that cannot be counted."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder)) - 1  # less the one listdir itself opened
        except FileNotFoundError:
            continue
    return None


class DescriptorGauge:
    """Whether this process is short of descriptors, for connection admission.

    Counting /proc/self/fd costs ~0.6 ms at 1,000 descriptors, too much for every connection:
    the count is taken at most every `recount_every` seconds (often, near the limit) and in
    between moved by the change in connections, which is what moves it most. The soft limit
    is read again with each count (`prlimit --pid` changes it from outside). A count that
    fails (EMFILE: listing needs a descriptor) means short.
    """

    def __init__(
        self,
        *,
        headroom: int = HEADROOM,
        recount_every: float = 0.25,
        count: Callable[[], int | None] = _open_descriptors,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.headroom = headroom
        self.recount_every = recount_every
        self._count = count
        self._clock = clock
        self._counted_at = float("-inf")
        self._open = 0
        self._limit = 0
        self._connections_then = 0
        self.short = False

    def crowded(self, connections: int) -> bool:
        """True if a new connection should be refused; `connections` is how many this process
        holds now."""
        now = self._clock()
        estimate = self._open + connections - self._connections_then
        near = estimate >= self._limit - 2 * self.headroom
        age = now - self._counted_at
        if age >= self.recount_every or (near and age >= 0.01):
            self._recount(now, connections)
            estimate = self._open
        # Hysteresis: once short, admit again only with a quarter of the headroom more free,
        # so that a server at the edge does not log a line for every connection.
        margin = self.headroom + (self.headroom // 4 if self.short else 0)
        short = self._limit > 0 and estimate >= self._limit - margin
        if short != self.short:
            self.short = short
            emit(
                log,
                "descriptors.short" if short else "descriptors.recovered",
                level=logging.WARNING if short else logging.INFO,
                open=estimate,
                limit=self._limit,
                headroom=self.headroom,
            )
        return short

    def _recount(self, now: float, connections: int) -> None:
        self._counted_at = now
        self._connections_then = connections
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self._limit = 0 if soft == resource.RLIM_INFINITY else soft
        try:
            counted = self._count()
        except OSError:  # EMFILE: not even one to list them with
            counted = self._limit
        if counted is None:  # cannot count here: admit by --max-connections alone
            self._limit = 0
        self._open = counted or 0
