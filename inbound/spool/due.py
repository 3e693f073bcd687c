"""The spool's due index: when each deferred message is tried next, kept in file names.

ROOT/due/ holds one empty file per deferred message, named `TIME.ID` (TIME in UTC, ISO 8601
basic format, so `ls due/` lists them in the order they fall due). One listing of the folder
tells a scheduler every due time without opening a file; a queued message without an entry is
due now (never deferred). This module decides nothing about when a message should run
(inbound.spool.retry does) and knows nothing of the other spool folders.

An entry moves by `rename(2)`. state.json stays the record; a deferral's entry is written after
it and is not fsynced: a crash can only leave an entry earlier than the state (the previous
one, or none), and the message is tried early, never late. Two entries for one message (an
operator's retry crossed a deferral) are resolved by the next listing: the earlier stands.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path

from inbound.core.ids import is_message_id
from inbound.datadir import fsync_dir, make_dir, open_fd

_TIME = "%Y%m%dT%H%M%S.%fZ"


def entry_name(message_id: str, when: datetime) -> str:
    """`TIME.ID`: the name of the entry that says `message_id` is due at `when`."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"due time must be timezone-aware, got {when.isoformat()}")
    return f"{when.astimezone(UTC).strftime(_TIME)}.{message_id}"


def _parse(name: str) -> tuple[str, datetime] | None:
    """(ID, due time) of an entry name, or None for anything else (a file we did not write)."""
    when, _, message_id = name.rpartition(".")
    if not is_message_id(message_id) or len(when) != len("20240501T120000.000000Z"):
        return None
    try:
        return message_id, datetime.fromisoformat(when)
    except ValueError:
        return None


class DueIndex:
    """The entries of one due/ folder. Its methods block on the file system (call them from a
    thread) and may be called from several threads at once.

    It remembers the names it listed or wrote, so moving an entry is one rename, not a
    listing. An entry another process moved meanwhile (`inbound spool retry`) is kept beside
    ours until the next listing keeps the earlier one."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._lock = threading.Lock()
        self._names: dict[str, str] | None = None  # ID -> entry name; None: not listed yet

    def read(self) -> dict[str, datetime]:
        """Every entry: message ID -> due time. One listing; no file is opened."""
        with self._lock:
            return self._list()

    def set(self, message_id: str, when: datetime, *, durable: bool = False) -> None:
        """Make `message_id` due at `when`; `durable`: fsync the folder (an operator's retry
        must survive a crash; a deferral need not, see the module docstring)."""
        new = entry_name(message_id, when)
        with self._lock:
            names = self._known()
            old = names.get(message_id)
            if old is not None and old != new:
                try:
                    os.rename(self._dir / old, self._dir / new)
                except FileNotFoundError:
                    # Moved behind our back (`inbound spool retry` made it due now): ours goes
                    # beside it, and the next listing keeps the earlier of the two.
                    old = None
            made = False
            if old is None:
                made = self._create(new)
            names[message_id] = new
            if durable:
                fsync_dir(self._dir)
                if made:
                    fsync_dir(self._dir.parent)

    def clear(self, message_id: str) -> None:
        """Remove the entry of a message that left queue/ (finished or dead-lettered). Not
        fsynced: an entry left by a crash names no queued message and is ignored."""
        with self._lock:
            name = self._known().pop(message_id, None)
            if name is not None:
                (self._dir / name).unlink(missing_ok=True)

    def _known(self) -> dict[str, str]:
        if self._names is None:
            self._list()
        assert self._names is not None
        return self._names

    def _create(self, name: str) -> bool:
        """Make the entry `name`; True if the folder had to be made first (the first deferral
        of a spool: a spool nothing was ever deferred in has no due/)."""
        made = False
        try:
            fd = open_fd(self._dir / name, os.O_WRONLY | os.O_CREAT)
        except FileNotFoundError:
            make_dir(self._dir, exist_ok=True)
            made = True
            fd = open_fd(self._dir / name, os.O_WRONLY | os.O_CREAT)
        os.close(fd)
        return made

    def _list(self) -> dict[str, datetime]:
        entries: dict[str, tuple[datetime, str]] = {}
        extra: list[str] = []
        try:
            names = os.listdir(self._dir)
        except FileNotFoundError:
            names = []  # nothing was ever deferred here
        for name in names:
            parsed = _parse(name)
            if parsed is None:
                continue
            message_id, when = parsed
            kept = entries.get(message_id)
            if kept is not None and kept[0] <= when:
                extra.append(name)
                continue
            if kept is not None:
                extra.append(kept[1])
            entries[message_id] = (when, name)
        # Two entries for one message: an operator's retry and a deferral crossed. The earlier
        # stands, so a retry made while an attempt was running is not lost.
        for name in extra:
            (self._dir / name).unlink(missing_ok=True)
        self._names = {message_id: name for message_id, (_, name) in entries.items()}
        return {message_id: when for message_id, (when, _) in entries.items()}
