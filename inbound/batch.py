"""Blocking calls of asyncio tasks run in batches by one thread: a group commit, generalised.

A task that hands a blocking call to a thread pool pays a thread hop (a queue, a wake-up, the
GIL handed over and back, a wake-up of the event loop) for every call, and calls that each end
with an fsync pay one fsync each. A `Batcher` runs a function over *all* the items submitted
while its thread was busy with the previous batch: one hop each way per batch, and the function
can make the whole batch durable with one fsync of each folder it touched (the dispatcher's
finished messages, the local S3 target's objects). Under load batches grow by themselves; a
lone item is run at once, never held back to wait for company.

This module owns the thread, the batching and handing results back to the submitting event
loop. What a batch does, and its durability, is the work function's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# A batch is at most this many items, so one very busy moment cannot hold the first caller of
# a batch for long.
MAX_BATCH = 256
# An idle thread ends after this long; the next submit starts another (a process that builds
# many batchers, a test suite, does not keep a thread for each).
IDLE_SECONDS = 2.0

_Job = tuple[T, asyncio.AbstractEventLoop, "asyncio.Future[R]"]


class Batcher(Generic[T, R]):
    """Runs `work(items)` in one thread for every batch of submitted items.

    `work` returns one result per item, in order: a value, or an `Exception` instance, which
    that item's caller raises. An exception raised by `work` itself fails every item of the
    batch. A caller cancelled before its batch starts has its item dropped; cancelled while its
    batch runs, the work is done and nobody is told (a cancelled caller treats its item as
    "may have happened")."""

    def __init__(
        self,
        name: str,
        work: Callable[[Sequence[T]], Sequence[R | Exception]],
        *,
        max_batch: int = MAX_BATCH,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self.name = name
        self._work = work
        self._max_batch = max_batch
        self._idle = idle_seconds
        self._queue: queue.SimpleQueue[_Job[T, R]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    async def submit(self, item: T) -> R:
        """`work([item, ...])`'s result for `item`, once its batch ran."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.put((item, loop, future))
        try:
            self._ensure_thread()
        except BaseException:
            future.cancel()  # no thread (no memory, a limit): the item is dropped, not done later
            raise
        return await future

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                thread.start()  # raises if no thread can be made: the caller fails, not hangs
                self._thread = thread

    def _take(self) -> list[_Job[T, R]] | None:
        """The next batch: the first job (waiting up to the idle time), then whatever else is
        queued; None: idle for that long, and the thread has ended its turn."""
        try:
            jobs = [self._queue.get(timeout=self._idle)]
        except queue.Empty:
            with self._lock:
                if self._queue.empty():  # a submit after this starts a new thread
                    self._thread = None
                    return None
            return []
        while len(jobs) < self._max_batch:
            try:
                jobs.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return jobs

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            # A caller cancelled before its batch ran (or whose thread could not be started)
            # is not waiting: its item is dropped, as if it had been cancelled a moment sooner.
            jobs = [job for job in jobs if not job[2].done()]
            if not jobs:
                continue
            items = [item for item, _, _ in jobs]
            try:
                results: Sequence[R | Exception] = self._work(items)
                if len(results) != len(items):
                    raise RuntimeError(
                        f"{self.name}: {len(results)} results for {len(items)} items"
                    )
            except Exception as exc:  # every caller of the batch is told
                results = [exc] * len(items)
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[R], object]]] = {}
            for (_, loop, future), result in zip(jobs, results, strict=True):
                by_loop.setdefault(loop, []).append((future, result))
            for loop, settled in by_loop.items():
                # One wake-up of each loop per batch; a loop closed meanwhile has no one waiting.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_settle, settled)


def _settle(settled: list[tuple[asyncio.Future[R], object]]) -> None:
    for future, result in settled:
        if future.done():  # its caller was cancelled
            continue
        if isinstance(result, Exception):
            future.set_exception(result)
        else:
            future.set_result(result)  # type: ignore[arg-type]
