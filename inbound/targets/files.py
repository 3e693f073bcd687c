"""Whole files written durably in batches: the local S3 target's objects (SPEC section 3).

The dispatcher forgets its spooled copy once an action succeeded, so a stored object must
survive a power loss before its store returns: its contents, its name (the rename of a
temporary file, so a crash leaves whole files only) and every folder made for it are synced.

One file at a time that is an fsync of the file and one of its folder: two synchronous writes
per object. A batch (`write_batch`, run by `inbound.batch`) writes every temporary file first,
makes all their contents durable at once, renames them, and fsyncs each folder once. "At once"
is one `syncfs(2)` per file system on Linux when the batch is large enough to pay for it (it
also flushes whatever else is dirty on that file system), else an fsync per file.

This module owns that order and nothing else: which path an object goes to is the target's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from inbound.datadir import fsync_dir, make_dirs, open_fd

# From this many files in a batch on one file system, one syncfs costs less than their fsyncs
# (measured on ext4: an fsync of a 10 KB file about 120 us of CPU, a syncfs about 250 us).
SYNCFS_FROM = 4


def _load_syncfs() -> Callable[[int], None] | None:
    """`syncfs(fd)` from the C library, or None where there is none (not Linux)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int

    def syncfs(fd: int) -> None:
        # Since Linux 5.8 it also reports a writeback error on the file system (errseq).
        if function(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    return syncfs


_SYNCFS = _load_syncfs()


def make_dirs_synced(directory: Path) -> None:
    """`mkdir -p` (0700, SPEC section 7 Files), syncing the parent of every directory it makes."""
    for created in make_dirs(directory):
        fsync_dir(created.parent)


class FileBatchWriter:
    """Writes batches of whole files durably; run by one thread at a time. `syncfs`: the
    call that syncs a file system (None: fsync each file; default: the C library's)."""

    def __init__(self, *, syncfs: Callable[[int], None] | Literal["libc"] | None = "libc") -> None:
        self._syncfs = _SYNCFS if syncfs == "libc" else syncfs
        # Folders made (and synced) already: no `stat` of every parent for every file. One
        # removed behind our back is made again when creating a file in it fails.
        self._made: set[Path] = set()

    def write_batch(self, batch: Sequence[tuple[Path, bytes]]) -> list[Exception | None]:
        """Write each `(path, content)`; one error (an `OSError`) or None per file, in order.
        A file with None is durable under its name; one with an error may be missing, or be
        its previous version, never a part of the new one. A path given twice is written
        twice, in order (the second time in a batch of its own: they share a temporary file)."""
        seen: set[Path] = set()
        first: list[int] = []
        again: list[int] = []
        for i, (path, _) in enumerate(batch):
            (again if path in seen else first).append(i)
            seen.add(path)
        if not again:
            return self._write_unique(batch)
        errors: list[Exception | None] = [None] * len(batch)
        for which in (first, again):
            for i, error in zip(which, self.write_batch([batch[i] for i in which]), strict=True):
                errors[i] = error
        return errors

    def _write_unique(self, batch: Sequence[tuple[Path, bytes]]) -> list[Exception | None]:
        errors: list[Exception | None] = [None] * len(batch)
        written: list[tuple[int, int]] = []  # (index, descriptor of its temporary file)
        try:
            for i, (path, content) in enumerate(batch):
                try:
                    written.append((i, self._write_temporary(path, content)))
                except OSError as exc:
                    errors[i] = exc
            self._sync_contents(written, errors)
        finally:
            for _, fd in written:
                os.close(fd)
        folders: dict[Path, list[int]] = {}
        for i, _ in written:
            if errors[i] is not None:
                continue
            path = batch[i][0]
            try:
                os.replace(_temporary(path), path)
            except OSError as exc:
                errors[i] = exc
                continue
            folders.setdefault(path.parent, []).append(i)
        for folder, which in folders.items():
            try:
                fsync_dir(folder)
            except OSError as exc:
                for i in which:
                    errors[i] = exc
        return errors

    def _write_temporary(self, path: Path, content: bytes) -> int:
        """The temporary file of `path`, with `content` written (not synced), open."""
        folder = path.parent
        if folder not in self._made:
            make_dirs_synced(folder)
            self._made.add(folder)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        try:
            fd = open_fd(_temporary(path), flags)
        except FileNotFoundError:  # the folder was removed since we made it
            self._made.discard(folder)
            make_dirs_synced(folder)
            self._made.add(folder)
            fd = open_fd(_temporary(path), flags)
        try:
            write_at(fd, content, 0)
        except OSError:
            os.close(fd)
            raise
        return fd

    def _sync_contents(
        self, written: list[tuple[int, int]], errors: list[Exception | None]
    ) -> None:
        """Make the written files' contents durable: syncfs per file system, or fsync each."""
        devices: dict[int, list[tuple[int, int]]] = {}
        for i, fd in written:
            if errors[i] is None:
                devices.setdefault(os.fstat(fd).st_dev, []).append((i, fd))
        for files in devices.values():
            if self._syncfs is not None and len(files) >= SYNCFS_FROM:
                try:
                    self._syncfs(files[0][1])
                    continue
                except OSError:
                    pass  # each file on its own, so each one's error is its own
            for i, fd in files:
                try:
                    os.fsync(fd)
                except OSError as exc:
                    errors[i] = exc


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def write_at(fd: int, data: bytes, offset: int) -> None:
    """All of `data` at `offset`; a write that writes nothing (a full disk) raises ENOSPC."""
    view = memoryview(data)
    while view:
        # A short write (the disk filling up) is followed by the write that fails.
        written = os.pwrite(fd, view, offset)
        if written == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view, offset = view[written:], offset + written
