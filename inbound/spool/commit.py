"""The group commit: many SMTP sessions' messages made durable with few fsyncs (SPEC §7).

This module owns batching commits for asyncio tasks, through the spool's public interface only
(`SpoolWriter.write_out` and `sync`, `Spool.publish`); it knows no file or directory of the
spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from inbound.observe.supervise import Backoff, supervise_thread
from inbound.spool.store import Spool, SpoolError, SpoolMeta, SpoolWriteError, SpoolWriter

# Threads that seal one batch together (the commit thread is one of them): a disk takes several
# flushes at once, and a filesystem several new inodes, where one thread would wait for each.
SYNCERS = 4
# A message up to this size stays in memory until it is sealed (`SpoolWriter`): as much as the
# write buffer of its file would hold anyway, so a thousand sessions in DATA cost no more.
MEMORY_BYTES = 64 * 1024


@dataclass(eq=False)
class _Job:
    """One commit: its caller's loop and future; `taken` and `dropped` under the lock."""

    writer: SpoolWriter
    meta: SpoolMeta
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[None]
    taken: bool = False  # the commit thread has it: its outcome decides
    dropped: bool = False  # its caller was cancelled first: never sealed


class GroupCommitter:
    """Commits for asyncio tasks, done in batches by one thread.

    The thread takes every commit waiting and seals them in up to SYNCERS groups at once (a
    group's files all written out before its fsyncs, so the first fsync's journal commit
    carries the group and the others find little left to do), publishes the batch with one
    fsync of the queue directory, and answers the batch's callers with one wake-up of their
    loop: a few hand-offs per batch, not three per message.
    """

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._syncers: ThreadPoolExecutor | None = None
        self._closed = False

    def start(self) -> None:
        if self._thread is None:
            self._syncers = ThreadPoolExecutor(SYNCERS - 1, thread_name_prefix="spool-sync")
            self._thread = threading.Thread(
                target=supervise_thread,
                args=("spool.commit", self._run),
                kwargs={"backoff": Backoff("spool.commit", first=0.05, cap=5.0)},
                name="spool-commit",
                daemon=True,
            )
            self._thread.start()

    def open_writer(self, message_id: str) -> SpoolWriter:
        return self._spool.open_writer(message_id, memory=MEMORY_BYTES)

    async def commit(self, writer: SpoolWriter, meta: SpoolMeta) -> None:
        """Return once the message is durable and queued; raise what `SpoolWriter.commit` would.

        The writer belongs to the committer from here on. A caller cancelled (its client left
        before the reply) will never answer 250, so its message must not stay queued: before
        the thread takes it, it is aborted; once taken, the commit is let finish and what it
        queued is withdrawn (a crash in between delivers it: at least once).
        """
        if self._thread is None or self._closed:
            raise SpoolError("the group committer is not running")
        loop = asyncio.get_running_loop()
        job = _Job(writer, meta, loop, loop.create_future())
        self._jobs.put(job)
        try:
            await asyncio.shield(job.done)
        except asyncio.CancelledError:
            with self._lock:
                taken = job.taken
                job.dropped = not taken
            if not taken:
                writer.abort()  # that caller is gone and will never answer 250
            else:
                with contextlib.suppress(Exception):
                    await job.done
                    await asyncio.to_thread(self._spool.finish, writer.message_id)
            raise

    async def close(self) -> None:
        """Stop taking commits, finish every one already taken, stop the thread."""
        self._closed = True
        if self._thread is not None:
            self._jobs.put(None)  # behind every commit taken
            await asyncio.to_thread(self._thread.join)
        if self._syncers is not None:
            self._syncers.shutdown()
        # A commit that slipped in behind the close: refused, not left waiting.
        late: dict[_Job, BaseException | None] = {}
        while not self._jobs.empty():
            job = self._jobs.get()
            if job is not None:
                job.writer.abort()
                late[job] = SpoolError("the group committer is not running")
        _answer(late)

    def _run(self) -> None:
        """Commit batches until closed; run by `supervise_thread`, which runs it again after
        an exception (a commit thread that died would leave every later commit waiting)."""
        while True:
            taken = [self._jobs.get()]  # block for the first, then take whatever is waiting
            while not self._jobs.empty():
                taken.append(self._jobs.get())
            with self._lock:
                jobs = [job for job in taken if job is not None and not job.dropped]
                for job in jobs:
                    job.taken = True
            outcomes: dict[_Job, BaseException | None] = {}
            try:
                self._commit(jobs, outcomes)
            except BaseException as exc:
                # Those callers answer 451: whatever was renamed already is complete and is
                # dispatched, and the client sends again (at least once, SPEC §7).
                for job in jobs:
                    if job not in outcomes:
                        failure = SpoolWriteError(f"message {job.writer.message_id}: cannot queue")
                        failure.__cause__ = exc
                        outcomes[job] = failure
                _answer(outcomes)
                if None in taken:
                    self._jobs.put(None)  # the close still ends the thread when it runs again
                raise
            _answer(outcomes)
            if None in taken:
                return

    def _commit(self, jobs: Sequence[_Job], outcomes: dict[_Job, BaseException | None]) -> None:
        """Seal `jobs` (in up to SYNCERS groups at once) and publish them; each one's failure
        goes to `outcomes`."""
        syncers = self._syncers
        groups = [jobs[i::SYNCERS] for i in range(min(SYNCERS, len(jobs)))]
        others = [syncers.submit(_seal, group) for group in groups[1:]] if syncers else []
        results = _seal(groups[0] if others else jobs)
        for other in others:
            results += other.result()
        sealed = [job for job, error in results if error is None]
        outcomes.update((job, error) for job, error in results if error is not None)
        errors = self._spool.publish([job.writer for job in sealed]) if sealed else []
        for job, error in zip(sealed, errors, strict=True):
            outcomes[job] = error


def _seal(jobs: Sequence[_Job]) -> list[tuple[_Job, Exception | None]]:
    """Write out every message of `jobs`, then fsync them; each one's failure is its own."""
    results: list[tuple[_Job, Exception | None]] = []
    written = []
    for job in jobs:
        try:
            job.writer.write_out(job.meta)
            written.append(job)
        except Exception as exc:  # that caller is told, and no one else
            results.append((job, exc))
    for job in written:
        try:
            job.writer.sync()
            results.append((job, None))
        except Exception as exc:
            results.append((job, exc))
    return results


def _answer(outcomes: dict[_Job, BaseException | None]) -> None:
    """Settle each caller's future on its loop: one wake-up per loop for the whole batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, BaseException | None]]] = {}
    for job, outcome in outcomes.items():
        by_loop.setdefault(job.loop, []).append((job, outcome))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: no one is waiting
            loop.call_soon_threadsafe(_settle, settled)


def _settle(settled: list[tuple[_Job, BaseException | None]]) -> None:
    for job, outcome in settled:
        if job.done.done():
            continue
        if outcome is None:
            job.done.set_result(None)
        else:
            job.done.set_exception(outcome)
