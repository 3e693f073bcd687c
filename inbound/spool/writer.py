"""One message being written into the spool's tmp/ID/ and sealed there (SPEC §7, durability).

This module owns the files of one message while it is received and sealed: message.eml, its
bytes exactly as received, and meta.json, its envelope and verdicts; `inbound.spool.store`
owns the rest of the layout, and queues what a writer sealed (`Spool.publish`). tmp/ID is a
delivered message's folder when the pool has one (`inbound.spool.pool`): its two files are then
written over and cut to length, so receiving a message makes no inode.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NoReturn

from inbound.core.ports import MessageSource, SpoolError, SpoolWriteError
from inbound.datadir import create_file, fsync_dir, make_dir, open_fd
from inbound.message.source import BytesSource, FileSource
from inbound.spool.retry import SpoolMeta

if TYPE_CHECKING:
    from inbound.spool.store import Spool

MESSAGE, META = "message.eml", "meta.json"
_WRITE_BUFFER = 64 * 1024


class SpoolWriter:
    """Streams one message into tmp/ID/; `commit` moves it, durable, to queue/ID/.

    With `memory` > 0 the first `memory` bytes are kept in memory and nothing is written before
    the seal: a small message costs no file until it is accepted (and none at all when it is
    refused), its checks read it from memory, and its bytes reach the disk in one write. A
    message that grows past `memory` goes to its file from then on, in the session's writes
    (a full disk shows inside DATA, and a big message is never held whole)."""

    def __init__(self, directory: Path, spool: Spool, *, memory: int = 0) -> None:
        self.message_id, self._dir, self._spool = directory.name, directory, spool
        self._size = 0
        self._memory = memory
        self._buffer: bytearray | None = bytearray() if memory > 0 else None
        self._snapshot: bytes | None = None  # the buffer as bytes, while no write changes it
        self._file: BinaryIO | None = None
        self._made = False  # tmp/ID is ours: delete it on abort
        self._reused = False  # tmp/ID came from the pool, with an earlier message's files
        self._unsynced: list[int] = []  # descriptors of files written out, not yet fsynced
        self._closed = False
        # Set once sealing starts: from then on the message is the committer's, and an abort
        # from the session (a client gone right after the final dot cancels it mid-commit)
        # must not delete files a sealer thread is fsyncing or renaming into queue/.
        self._sealing = False
        self._lock = threading.Lock()
        if self._buffer is None:
            self._create()

    @property
    def size(self) -> int:
        return self._size

    @property
    def directory(self) -> Path:
        """tmp/ID: where the message is sealed, for `Spool.publish` to move into queue/."""
        return self._dir

    def _make_dir(self) -> None:
        if self._spool.take_folder(self._dir):
            # A delivered message's folder (`inbound.spool.pool`): its two files are
            # overwritten, and no inode is made (nor freed later).
            self._made = self._reused = True
            return
        try:
            make_dir(self._dir)
        except FileExistsError as exc:  # tmp/ID is another writer's: leave it alone
            self._closed = True
            self._buffer = self._snapshot = None
            raise SpoolWriteError(f"message {self.message_id}: is being received") from exc
        except OSError as exc:
            self._fail(exc, "cannot create")
        self._made = True

    def _create(self) -> None:
        self._make_dir()
        try:
            if self._reused:  # the old bytes go now: this message streams over them
                fd = open_fd(self._dir / MESSAGE, os.O_WRONLY | os.O_TRUNC)
                self._file = open(fd, "wb", buffering=_WRITE_BUFFER)  # noqa: SIM115 - kept open
            else:
                self._file = create_file(self._dir / MESSAGE, buffering=_WRITE_BUFFER)
        except OSError as exc:
            self._fail(exc, "cannot create")

    def _fail(self, exc: OSError, doing: str) -> NoReturn:
        self.discard()
        raise SpoolWriteError(f"message {self.message_id}: {doing}: {exc.strerror}") from exc

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolError(f"message {self.message_id}: the writer is closed")

    def write(self, chunk: bytes) -> None:
        self._check_open()
        buffer = self._buffer
        if buffer is not None:
            buffer += chunk
            self._size += len(chunk)
            self._snapshot = None
            if len(buffer) > self._memory:
                self._spill(buffer)
            return
        assert self._file is not None, "an open writer without a buffer has a file"
        try:
            self._file.write(chunk)
        except OSError as exc:
            self._fail(exc, "cannot write")
        self._size += len(chunk)

    def _spill(self, buffer: bytearray) -> None:
        """Past `memory` bytes: the file, with what was kept so far; memory no more."""
        self._create()
        self._buffer = None
        assert self._file is not None
        try:
            self._file.write(buffer)
        except OSError as exc:
            self._fail(exc, "cannot write")

    def source(self) -> MessageSource:
        """The message as written so far, flushed, to be read before commit (e.g. scanned)."""
        self._check_open()
        if self._buffer is not None:
            if self._snapshot is None:
                self._snapshot = bytes(self._buffer)
            return BytesSource(self._snapshot)
        assert self._file is not None
        try:
            self._file.flush()
        except OSError as exc:
            self._fail(exc, "cannot flush")
        return FileSource(self._dir / MESSAGE)

    def abort(self) -> None:
        """Forget the message, best effort (recover() removes whatever is left); once sealing
        has started this does nothing: the message may still be queued, and is then delivered
        at least once (the client, seeing no 250, may send it again)."""
        with self._lock:
            if self._sealing:
                return
            self.discard()

    def discard(self) -> None:
        """Forget the message even once sealed: for `Spool.publish`, when it cannot queue it."""
        self._closed = True
        self._buffer = self._snapshot = None
        while self._unsynced:
            with contextlib.suppress(OSError):
                os.close(self._unsynced.pop())
        f, self._file = self._file, None
        if f is not None:
            with contextlib.suppress(OSError):  # the bytes are being thrown away anyway
                f.close()
        if self._made:
            shutil.rmtree(self._dir, ignore_errors=True)

    def seal(self, meta: SpoolMeta) -> None:
        """fsync message.eml, meta.json and tmp/ID: the message is complete on disk in tmp/,
        not yet queued (`Spool.publish` queues it). Blocks on the disk."""
        self.write_out(meta)
        self.sync()

    def write_out(self, meta: SpoolMeta) -> None:
        """The first half of `seal`: message.eml and meta.json written, not yet fsynced. A
        group commit writes out a batch, then syncs it: the first fsync's journal commit then
        carries every file of the batch, and the other fsyncs find little left to do."""
        if meta.message_id != self.message_id or meta.size != self._size:
            self.abort()
            raise ValueError(f"meta of {meta.message_id} ({meta.size} bytes) does not match")
        with self._lock:
            self._check_open()  # an aborted writer is closed: nothing to seal
            self._sealing = self._closed = True
        try:
            buffer, self._buffer, self._snapshot = self._snapshot or self._buffer, None, None
            if buffer is not None:  # nothing on disk yet: the directory, then the bytes at once
                self._make_dir()
                self._unsynced.append(_write_file(self._dir / MESSAGE, buffer, self._reused))
            else:
                f = self._file
                assert f is not None
                f.flush()
                self._unsynced.append(os.dup(f.fileno()))
                self._file = None
                f.close()
            data = json.dumps(meta.to_json(), indent=2).encode()
            self._unsynced.append(_write_file(self._dir / META, data, self._reused))
        except OSError as exc:
            self._fail(exc, "cannot seal")

    def sync(self) -> None:
        """The second half of `seal`: the files and tmp/ID fsynced."""
        try:
            while self._unsynced:
                fd = self._unsynced[-1]
                os.fsync(fd)
                self._unsynced.pop()
                os.close(fd)
            if not self._reused:  # a reused folder's entries did not change
                fsync_dir(self._dir)
        except OSError as exc:
            self._fail(exc, "cannot seal")

    def commit(self, meta: SpoolMeta) -> None:
        """Only after this returns may the receiver answer 250 (SPEC §7)."""
        self.seal(meta)
        error = self._spool.publish([self])[0]
        if error is not None:
            raise error


def _write_file(path: Path, data: bytes | bytearray, reused: bool) -> int:
    """A file holding `data`, not yet fsynced, and its open descriptor: raw descriptor calls,
    no buffered stream. `reused`: the file of an earlier message is overwritten in place and
    cut to length (its blocks are reused, and no inode is made). Never created then: the
    folder's entries are not fsynced again, so a file missing from it is an error (451), not
    a new entry that might not outlive a crash."""
    flags = os.O_WRONLY if reused else os.O_WRONLY | os.O_CREAT | os.O_EXCL
    fd = open_fd(path, flags)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if reused:
            os.ftruncate(fd, len(data))
    except BaseException:
        os.close(fd)
        raise
    return fd
