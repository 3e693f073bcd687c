"""The group commit: many SMTP sessions' messages made durable with few fsyncs (SPEC §7).

This module owns batching commits for asyncio tasks, through the spool's public interface only
(`SpoolWriter.seal`, `Spool.publish`); it knows no file or directory of the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from inbound.observe.supervise import Backoff, supervise_thread
from inbound.spool.store import Spool, SpoolError, SpoolMeta, SpoolWriteError, SpoolWriter

_Sealed = tuple[SpoolWriter, Future[None]]
# A message up to this size stays in memory until it is sealed (`SpoolWriter`): as much as the
# write buffer of its file would hold anyway, so a thousand sessions in DATA cost no more.
MEMORY_BYTES = 64 * 1024


class GroupCommitter:
    """Commits for asyncio tasks: sealed in parallel on a pool, published in batches by a thread.

    Sealing is parallel because concurrent fsyncs share the filesystem's journal commits (one
    thread doing them in turn manages about 1/(3 x flush latency) messages a second). Publishing
    is batched because one publish (one fsync of the queue directory) makes a batch durable.
    """

    def __init__(self, spool: Spool, *, sealers: int = 16) -> None:
        self._spool = spool
        self._sealers = ThreadPoolExecutor(sealers, thread_name_prefix="spool-seal")
        self._sealed: queue.SimpleQueue[_Sealed | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> None:
        if self._thread is None:
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
        sealing starts it is aborted; once sealing has started the commit is let finish and
        what it queued is withdrawn (a crash in between delivers it: at least once).
        """
        if self._thread is None or self._closed:
            raise SpoolError("the group committer is not running")
        done: Future[None] = Future()
        self._sealers.submit(self._seal, writer, meta, done)
        committed = asyncio.wrap_future(done)
        try:
            await asyncio.shield(committed)
        except asyncio.CancelledError:
            if not done.cancel():  # sealing or publishing: its outcome decides
                with contextlib.suppress(Exception):
                    await committed
                    await asyncio.to_thread(self._spool.finish, writer.message_id)
            raise

    async def close(self) -> None:
        """Stop taking commits, finish every one already taken, stop the threads."""
        self._closed = True
        await asyncio.to_thread(self._sealers.shutdown)  # every taken commit is sealed or failed
        if self._thread is not None:
            self._sealed.put(None)  # behind every sealed message
            await asyncio.to_thread(self._thread.join)

    def _seal(self, writer: SpoolWriter, meta: SpoolMeta, done: Future[None]) -> None:
        if not done.set_running_or_notify_cancel():
            writer.abort()  # that caller is gone and will never answer 250
            return
        try:
            writer.seal(meta)
        except Exception as exc:  # that caller is told, and no one else
            done.set_exception(exc)
            return
        self._sealed.put((writer, done))

    def _run(self) -> None:
        """Publish batches until closed; run by `supervise_thread`, which runs it again after
        an exception (a commit thread that died would leave every later commit waiting)."""
        while True:
            taken = [self._sealed.get()]  # block for the first, then take whatever is waiting
            while not self._sealed.empty():
                taken.append(self._sealed.get())
            jobs = [job for job in taken if job is not None]
            try:
                errors = self._spool.publish([writer for writer, _ in jobs]) if jobs else []
            except BaseException as exc:
                # Those callers answer 451: whatever was renamed already is complete and is
                # dispatched, and the client sends again (at least once, SPEC §7).
                for writer, done in jobs:
                    failure = SpoolWriteError(f"message {writer.message_id}: cannot queue")
                    failure.__cause__ = exc
                    done.set_exception(failure)
                if None in taken:
                    self._sealed.put(None)  # the close still ends the thread when it runs again
                raise
            for (_, done), error in zip(jobs, errors, strict=True):
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)
            if None in taken:
                return
