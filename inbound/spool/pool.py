"""The spool's pool of message folders to reuse: no new inode per message (issue 13).

A delivered message's folder (its message.eml and meta.json, nothing else) is not deleted: it
moves to ROOT/pool/ and the next message received is written into it, over the old bytes,
instead of into a new folder with two new files. Allocating and freeing those three inodes
(`mkdir`, two `creat`, two `unlink`, `rmdir`) was about half of the spool's CPU per message on
ext4: the spool's system calls alone, in batches of 10 messages of 10 KB, took 0.55 ms of CPU
per message that way and 0.25 ms with two more renames of a reused folder instead.

This module owns ROOT/pool/ and which folder in it is handed to whom; the folder's files are
the writer's (`inbound.spool.writer`), the rest of the layout is `inbound.spool.store`'s.

A folder enters pool/ only once its leaving queue/ is durable (`Spool.finish_many`): its files
are written over in place, and overwritten blocks may reach the disk before the journal that
moved the folder does, so a folder that could still be found in queue/ after a power loss is
never written over.

A folder is taken by renaming it out of pool/: of two processes (`--workers`) that want the
same one, the rename makes exactly one the owner, and the other tries the next. What is in
pool/ was never acknowledged as anything: a crash leaves it there, free, and a folder a crash
left half-moved in tmp/ is removed at start-up as before.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from inbound.datadir import make_dir
from inbound.spool.writer import MESSAGE, META

# Folders kept for reuse: past this many, a delivered message's folder is deleted as before.
# More than the messages committed at once (a batch per sealing thread); a burst beyond it
# makes folders as before.
MAX_FREE = 256
# A delivered message larger than this is deleted, not kept: the pool holds at most
# MAX_FREE * MAX_BYTES (64 MB) of disk for delivered messages, and most mail is smaller.
MAX_BYTES = 256 * 1024
# How soon a process that found pool/ empty looks in it again for folders another one put
# there (`--workers`: the supervisor delivers, the workers receive); one that found some there
# looks again as soon as it has used them.
_RELIST_SECONDS = 0.5
_FILES = sorted([MESSAGE, META])


class FolderPool:
    """The free folders of one spool's pool/; thread-safe. Every method blocks on the disk."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._lock = threading.Lock()
        self._free: list[str] = []  # names in pool/ this process saw or put there
        self._quiet_until = 0.0  # monotonic time before which pool/ is not listed again
        self._kept = 0  # an estimate of len(pool/), for MAX_FREE

    def take(self, target: Path) -> bool:
        """Move a free folder to `target` (which must not exist); False if there is none.
        The folder holds message.eml and meta.json of an earlier message, to be overwritten."""
        while True:
            name = self._next()
            if name is None:
                return False
            try:
                os.rename(self._dir / name, target)
            except FileNotFoundError:
                continue  # another process took it first
            except OSError:
                return False  # the caller makes a new folder instead
            return True

    def _relist(self) -> None:
        """Look in pool/ again (under the lock): the folders other processes put there or
        took (`--workers`: the supervisor delivers, the workers receive, so neither one's own
        count is right for long). Not again within _RELIST_SECONDS of finding it empty (or
        full, for `give`): one listing per batch of folders, not one per message."""
        if time.monotonic() < self._quiet_until:
            return
        try:
            self._free = os.listdir(self._dir)
        except FileNotFoundError:
            self._free = []
        self._kept = len(self._free)
        if not self._free or self._kept >= MAX_FREE:
            self._quiet_until = time.monotonic() + _RELIST_SECONDS

    def _next(self) -> str | None:
        with self._lock:
            if not self._free:
                self._relist()
            if not self._free:
                return None
            self._kept = max(0, self._kept - 1)
            return self._free.pop()

    def give(self, folder: Path) -> bool:
        """Keep `folder` (out of queue/ already, durably) for reuse if it holds only a
        message's two files; False if it was not kept (the caller deletes it)."""
        with self._lock:
            if self._kept >= MAX_FREE:
                self._relist()
            if self._kept >= MAX_FREE:
                return False
        try:
            # A folder with anything else (state.json of a message that was dispatched more
            # than once, a temporary file) is not reused: the writer overwrites only the two
            # files, and a stale state.json would mark the next message's actions done.
            if sorted(os.listdir(folder)) != _FILES:
                return False
            if os.stat(folder / MESSAGE).st_size > MAX_BYTES:
                return False
            try:
                os.rename(folder, self._dir / folder.name)
            except FileNotFoundError:
                if folder.exists():
                    make_dir(self._dir, exist_ok=True)  # a spool from before pool/ existed
                    os.rename(folder, self._dir / folder.name)
                else:
                    raise
        except OSError:
            return False
        with self._lock:
            self._free.append(folder.name)
            self._kept += 1
        return True
