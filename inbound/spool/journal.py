"""The step journal: every dispatch step that succeeded, appended to one file in batches.

A message with several actions must not repeat one that succeeded when it is retried, or run
again after a crash (SPEC section 7). Rewriting the message's state.json before each next
action (a temporary file, an fsync, a rename, an fsync of its folder) cost a synchronous
write per action per message; here every success is one line appended to ROOT/steps.journal,
and the dispatcher makes everything appended while the previous batch was being written durable
with one `fdatasync` (`inbound.batch`). A message whose every action succeeds at the first
attempt never gets a state file: its records die with it. state.json is still written when a
message is deferred or dead-lettered, with every step (the journal's included).

Each line is `CRC32 JSON\\n`, the CRC (8 hex digits) over the JSON text; the JSON is
`{"m": MESSAGE_ID, "k": STEP_KEY, "a": ATTEMPTS, "r": RESULT}`. Only successes are recorded
(a success is final: it is never replaced by a later failure). A SIGKILL or a power loss in the
middle of an append leaves a torn last line: reading stops at the first line that is not whole
(no newline, a bad CRC, not the JSON above), and the owner cuts it off when it opens the
journal, so later appends never follow garbage.

One process owns the journal (the dispatcher's, after `Spool.recover`): it keeps the records of
messages still queued in memory, appends, and rewrites the file without the finished messages'
records when it has grown (a new file, fsync, rename). Any other process (`inbound spool
show`) reads the file. This module knows nothing of the other spool files.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from inbound.core.steps import StepRecord
from inbound.datadir import create_file, fsync_dir, open_fd

NAME = "steps.journal"
# The owner rewrites the journal without the finished messages' records once it is this large
# (and at least four times what is still needed).
COMPACT_BYTES = 4 * 1024 * 1024

Records = dict[str, dict[str, StepRecord]]  # message ID -> step key -> record


def encode(message_id: str, key: str, record: StepRecord) -> bytes:
    """One journal line for a succeeded step."""
    text = json.dumps(
        {"m": message_id, "k": key, "a": record.attempts, "r": record.result},
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()
    return b"%08x %s\n" % (zlib.crc32(text), text)


def parse(data: bytes) -> tuple[Records, int]:
    """The records in `data`, and the length of its whole lines: everything from the first
    line that is not a whole record on (a torn tail) is left out."""
    records: Records = {}
    end = 0
    while (newline := data.find(b"\n", end)) >= 0:
        line = data[end:newline]
        entry = _decode(line)
        if entry is None:
            break
        message_id, key, record = entry
        records.setdefault(message_id, {})[key] = record
        end = newline + 1
    return records, end


def _decode(line: bytes) -> tuple[str, str, StepRecord] | None:
    crc, _, text = line.partition(b" ")
    try:
        if len(crc) != 8 or int(crc, 16) != zlib.crc32(text):
            return None
        value = json.loads(text)
        message_id, key, attempts, result = value["m"], value["k"], value["a"], value["r"]
    except (ValueError, TypeError, KeyError):
        return None
    if not (isinstance(message_id, str) and isinstance(key, str) and isinstance(attempts, int)):
        return None
    if result is not None and not isinstance(result, str):
        return None
    return message_id, key, StepRecord("succeeded", attempts, None, result)


class StepJournal:
    """The journal file of one spool. `open` makes this process its owner (appends, memory);
    without it, `records` reads the file. Every method may block on the disk; they may be
    called from several threads."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / NAME
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._end = 0
        self._live: Records = {}
        # A reader's last parse, by the file's (inode, size, mtime): `spool list` asks per message.
        self._read: tuple[tuple[int, int, int], Records] | None = None

    def open(self, keep: Callable[[str], bool] | None = None) -> None:
        """Own the journal: read it, drop the records of messages `keep` says are gone (None:
        keep all) and any torn tail, and rewrite it if that changed anything."""
        with self._lock:
            self._open(keep)

    def _open(self, keep: Callable[[str], bool] | None) -> None:
        if self._fd is not None:
            return
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        records, end = parse(data)
        kept = {m: steps for m, steps in records.items() if keep is None or keep(m)}
        if end != len(data) or kept.keys() != records.keys() or not data:
            self._rewrite(kept)
        else:
            self._fd = open_fd(self.path, os.O_WRONLY)
            self._end = end
        self._live = kept

    def _rewrite(self, records: Records) -> None:
        """Replace the file by one holding `records` only: a whole file, or the old one."""
        data = b"".join(
            encode(message_id, key, record)
            for message_id, steps in records.items()
            for key, record in steps.items()
        )
        temporary = self.path.with_name(f".{NAME}.tmp")
        with create_file(temporary) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.path)
        fsync_dir(self.path.parent)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = open_fd(self.path, os.O_WRONLY)
        self._end = len(data)

    def append(self, entries: Sequence[tuple[str, str, StepRecord]]) -> None:
        """Make the succeeded steps `(message ID, key, record)` durable: one write, one
        fdatasync. Raises `OSError`; then none of them is in the journal."""
        data = b"".join(encode(message_id, key, record) for message_id, key, record in entries)
        with self._lock:
            self._open(None)
            assert self._fd is not None
            try:
                _write_at(self._fd, data, self._end)
                os.fdatasync(self._fd)
            except OSError:
                # Cut back to the last whole record, so the next append does not follow a
                # part of this one; if that fails too, a reader stops at the part.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._end)
                raise
            self._end += len(data)
            for message_id, key, record in entries:
                self._live.setdefault(message_id, {})[key] = record
            live = sum(len(steps) for steps in self._live.values())
            if self._end > max(COMPACT_BYTES, 4 * 128 * live):
                self._rewrite(self._live)

    def forget(self, message_ids: Iterable[str]) -> None:
        """The messages are gone: their records are not kept when the journal is rewritten."""
        with self._lock:
            for message_id in message_ids:
                self._live.pop(message_id, None)

    def records(self, message_id: str) -> dict[str, StepRecord]:
        """The recorded successes of one message (step key -> record)."""
        with self._lock:
            if self._fd is not None:
                return dict(self._live.get(message_id, {}))
            try:
                st = self.path.stat()
            except FileNotFoundError:
                return {}
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if self._read is None or self._read[0] != stamp:
                self._read = (stamp, parse(self.path.read_bytes())[0])
            return dict(self._read[1].get(message_id, {}))

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _write_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written == 0:  # a full disk: the write after a short one fails
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view, offset = view[written:], offset + written
