"""The spool on disk: write a message to tmp/, fsync, rename into queue/ (SPEC §7, durability).

Layout under ROOT (IDs are `inbound.core.ids` message IDs, so names sort by receipt time):

    ROOT/tmp/ID/                 a message being received or sealed (deleted at start-up: never
                                 acknowledged; a small one is in memory until sealed, `SpoolWriter`)
    ROOT/queue/ID/message.eml    the raw message bytes exactly as received (after dot-unstuffing)
    ROOT/queue/ID/meta.json      envelope, connection facts, receipt time, rule-set digest,
                                 verdicts, hostname, size
    ROOT/queue/ID/state.json     dispatch progress (absent until the first attempt)
    ROOT/dead/ID/...             dead-lettered messages, same files plus the reason in state.json
    ROOT/rules/DIGEST.txt        the rule-set text a message was received with, by its SHA-256
    ROOT/due/TIME.ID             empty: a deferred message is due at TIME (inbound.spool.due)
    ROOT/pool/NAME/              a delivered message's folder, to be written over by the next
                                 message received (inbound.spool.pool): no inode per message
    ROOT/steps.journal           the dispatch steps that succeeded (inbound.spool.journal);
                                 state.json holds them too once it is written

A directory only ever appears in queue/ by `rename(2)` of one whose files were fsynced, so every
message there is complete. This module speaks no SMTP and runs no actions; it is the one place
that knows this layout (the other stages see `inbound.core.ports.SpoolPort` and message sources).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inbound.core.ids import is_message_id
from inbound.core.ports import MessageNotFound as MessageNotFound  # noqa: PLC0414 - re-export
from inbound.core.ports import MessageSource
from inbound.core.ports import RulesNotFoundError as RulesNotFoundError  # noqa: PLC0414
from inbound.core.ports import SpoolError as SpoolError  # noqa: PLC0414 - re-export
from inbound.core.ports import SpoolWriteError as SpoolWriteError  # noqa: PLC0414 - re-export
from inbound.datadir import create_file, fsync_dir, make_dirs
from inbound.message.source import FileSource
from inbound.spool.due import DueIndex
from inbound.spool.journal import StepJournal
from inbound.spool.pool import FolderPool
from inbound.spool.retry import DispatchState as DispatchState  # noqa: PLC0414 - re-export
from inbound.spool.retry import SpoolMeta as SpoolMeta  # noqa: PLC0414 - re-export
from inbound.spool.retry import StepRecord as StepRecord  # noqa: PLC0414 - re-export
from inbound.spool.writer import MESSAGE as _MESSAGE
from inbound.spool.writer import META as _META
from inbound.spool.writer import SpoolWriter as SpoolWriter  # noqa: PLC0414 - re-export

_STATE = "state.json"
_DIRS = ("tmp", "queue", "dead", "rules")


def _write_durably(directory: Path, name: str, data: bytes) -> None:
    """Replace `name` durably: a per-thread temporary file, fsync, rename, fsync the directory."""
    tmp = directory / f".{name}.{threading.get_ident()}.tmp"
    with create_file(tmp) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(directory / name)
    fsync_dir(directory)


def _remove(directory: Path) -> None:
    """Remove a message's folder: its files, then itself (`rmtree` for anything else)."""
    try:
        for name in os.listdir(directory):
            os.unlink(directory / name)
        os.rmdir(directory)
    except OSError:
        shutil.rmtree(directory, ignore_errors=True)


def _check_id(message_id: str) -> str:
    # Checking the shape means no ID can name a path outside the spool ("../x", "a/b").
    if not is_message_id(message_id):
        raise MessageNotFound(f"{message_id!r} is not a message ID")
    return message_id


class Spool:
    """One spool root; every method blocks on disk I/O, so call it from `asyncio.to_thread`.

    Threads may work on different messages at once; a message has one owner at a time."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp, self._queue, self._dead, self._rules = dirs = [root / d for d in _DIRS]
        try:
            for directory in dirs:
                make_dirs(directory)
            fsync_dir(root)  # new directories must outlive a crash before any message does
        except OSError as exc:
            raise SpoolError(f"cannot create the spool in {root}: {exc}") from exc
        self._due = DueIndex(root / "due")  # made by the first deferral
        self._pool = FolderPool(root / "pool")  # made by the first delivery
        self._journal = StepJournal(root)

    def recover(self) -> int:
        """Remove unacknowledged messages (tmp/) and half-saved state; call once at start-up."""
        try:
            removed = list(self._tmp.iterdir())
            for entry in removed:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            for stale in (*self._queue.glob("*/.*.tmp"), *self._dead.glob("*/.*.tmp")):
                stale.unlink(missing_ok=True)
            # This process dispatches: it owns the step journal (the finished messages'
            # records and a torn tail are dropped).
            kept = {p.name for parent in (self._queue, self._dead) for p in parent.iterdir()}
            self._journal.open(kept.__contains__)
        except OSError as exc:
            raise SpoolError(f"cannot recover the spool in {self.root}: {exc}") from exc
        return len(removed)

    def open_writer(self, message_id: str, *, memory: int = 0) -> SpoolWriter:
        """A writer into tmp/ID; `memory`: bytes kept in memory until the seal (`SpoolWriter`)."""
        return SpoolWriter(self._tmp / _check_id(message_id), self, memory=memory)

    def take_folder(self, target: Path) -> bool:
        """For a `SpoolWriter`: a delivered message's folder moved to `target` (tmp/ID) to be
        written over, or False (none free: the writer makes one)."""
        return self._pool.take(target)

    def save_rules(self, text: str) -> str:
        data = text.encode("utf-8")
        digest = hashlib.sha256(data).hexdigest()
        if not (self._rules / f"{digest}.txt").exists():
            try:
                _write_durably(self._rules, f"{digest}.txt", data)
            except OSError as exc:
                raise SpoolWriteError(f"cannot save rule set {digest}: {exc.strerror}") from exc
        return digest

    def load_rules(self, digest: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise RulesNotFoundError(f"{digest!r} is not a SHA-256 digest")
        try:
            # Bytes, not read_text(): newline translation would change the text and its digest.
            return (self._rules / f"{digest}.txt").read_bytes().decode("utf-8")
        except FileNotFoundError as exc:
            raise RulesNotFoundError(f"no saved rule set {digest}") from exc
        except OSError as exc:
            raise SpoolError(f"cannot read rule set {digest}: {exc.strerror}") from exc

    def queued(self) -> list[str]:
        return sorted(p.name for p in self._queue.iterdir() if is_message_id(p.name))

    def dead(self) -> list[str]:
        return sorted(p.name for p in self._dead.iterdir() if is_message_id(p.name))

    def depth(self) -> tuple[int, int]:
        return len(self.queued()), len(self.dead())

    def _home(self, message_id: str, *where: Path) -> Path:
        """The directory of a message in queue/ or dead/ (or only in those named by `where`)."""
        _check_id(message_id)
        parents = where or (self._queue, self._dead)
        for parent in parents:
            if (parent / message_id).is_dir():
                return parent / message_id
        raise MessageNotFound(f"no message {message_id} in {' or '.join(p.name for p in parents)}")

    def _read_json(self, message_id: str, name: str) -> Mapping[str, Any] | None:
        path = self._home(message_id) / name
        try:
            data: Mapping[str, Any] = json.loads(path.read_bytes())
        except FileNotFoundError:
            if not path.parent.is_dir():
                raise MessageNotFound(f"message {message_id} was moved or removed") from None
            return None
        except (OSError, ValueError) as exc:
            raise SpoolError(f"{path}: cannot read: {exc}") from exc
        return data

    def meta(self, message_id: str) -> SpoolMeta:
        try:
            return SpoolMeta.from_json(self._read_json(message_id, _META) or {})
        except (KeyError, TypeError, ValueError) as exc:
            raise SpoolError(f"message {message_id}: bad or missing {_META}: {exc!r}") from exc

    def message_path(self, message_id: str) -> Path:
        """The directory of a message, queue/ID or dead/ID: its bytes are in message.eml.
        This spool's own detail, for operators and tests; the stages use `source`."""
        return self._home(message_id)

    def source(self, message_id: str) -> MessageSource:
        return FileSource(self._home(message_id) / _MESSAGE)

    def state(self, message_id: str) -> DispatchState:
        """state.json (none: never deferred) with the journal's successes, which are final."""
        data = self._read_json(message_id, _STATE)
        try:
            state = DispatchState() if data is None else DispatchState.from_json(data)
            state.steps.update(self._journal.records(message_id))
        except (KeyError, TypeError, ValueError) as exc:
            raise SpoolError(f"message {message_id}: bad {_STATE}: {exc!r}") from exc
        except OSError as exc:
            raise SpoolError(f"message {message_id}: cannot read the step journal: {exc}") from exc
        return state

    def record_steps(self, steps: Sequence[tuple[str, str, StepRecord]]) -> None:
        """Make succeeded steps (message ID, step key, record) durable in the step journal,
        all at once; `SpoolWriteError`: none of them is."""
        try:
            self._journal.append(steps)
        except OSError as exc:
            raise SpoolWriteError(f"cannot record dispatch steps: {exc}") from exc

    def save_state(self, message_id: str, state: DispatchState) -> None:
        home = self._home(message_id)
        try:
            _write_durably(home, _STATE, json.dumps(state.to_json(), indent=2).encode())
        except OSError as exc:
            raise SpoolWriteError(f"message {message_id}: cannot save state: {exc}") from exc

    def due(self) -> dict[str, datetime]:
        """When each deferred message is due, from the due index: one listing, no state file
        read. A queued message not in it is due now; an ID not queued is left by a crash."""
        try:
            return self._due.read()
        except OSError as exc:
            raise SpoolError(f"cannot list {self.root / 'due'}: {exc.strerror}") from exc

    def defer(self, message_id: str, state: DispatchState) -> None:
        """Save `state` and make the message due at its `next_attempt_at` in the due index.

        In that order: a crash in between leaves the index earlier than the state (the
        message is tried early, never late)."""
        if state.next_attempt_at is None:
            raise ValueError(f"message {message_id}: deferred without a next attempt time")
        self.save_state(message_id, state)
        try:
            self._due.set(message_id, state.next_attempt_at)
        except OSError as exc:
            raise SpoolWriteError(f"message {message_id}: cannot index: {exc.strerror}") from exc

    def forget_due(self, message_id: str) -> None:
        """Drop the index entry of a message that is no longer queued (best effort)."""
        with contextlib.suppress(OSError):  # a leftover entry is ignored and pruned later
            self._due.clear(message_id)

    def _move(self, source: Path, target: Path) -> None:
        try:
            source.rename(target)
            fsync_dir(target.parent)
            fsync_dir(source.parent)
        except OSError as exc:
            raise SpoolWriteError(f"cannot move {source} to {target}: {exc.strerror}") from exc

    def finish(self, message_id: str) -> None:
        """Remove the message (from queue/, or from dead/ when an operator purges): its files
        are deleted, not kept for reuse (`inbound spool delete` means gone)."""
        error = self.finish_many([message_id], reuse=False)[0]
        if error is not None:
            raise error

    def finish_many(
        self, message_ids: Sequence[str], *, reuse: bool = True
    ) -> list[SpoolError | None]:
        """Delivered: `finish` for several messages, with one fsync of each folder they leave
        (the dispatcher's group commit); one error (or None) per message, in order. `reuse`:
        each folder goes to pool/ for the next message to be written over (`FolderPool`)."""
        errors: list[SpoolError | None] = []
        left: dict[Path, list[int]] = {}  # folder -> the messages that left it
        gone: list[Path] = []
        for i, message_id in enumerate(message_ids):
            try:
                home = self._home(message_id)
                moved = self._tmp / message_id
                # Rename first so queue/ never holds a half-deleted message; recover() empties
                # tmp/. Only the entry's leaving `home`'s folder must be durable: in tmp/ it is
                # garbage.
                try:
                    home.rename(moved)
                except OSError:  # tmp/ID left by an earlier finish cut short: clear it, again
                    shutil.rmtree(moved, ignore_errors=True)
                    home.rename(moved)
            except SpoolError as exc:
                errors.append(exc)
                continue
            except OSError as exc:
                errors.append(
                    SpoolWriteError(f"message {message_id}: cannot finish: {exc.strerror}")
                )
                continue
            errors.append(None)
            left.setdefault(home.parent, []).append(i)
            gone.append(moved)
        for folder, which in left.items():
            try:
                fsync_dir(folder)
            except OSError as exc:
                for i in which:
                    errors[i] = SpoolWriteError(
                        f"message {message_ids[i]}: cannot finish: {exc.strerror}"
                    )
        for moved in gone:
            # Into the pool only now, once leaving queue/ is durable: its files are written
            # over in place, and overwritten blocks may reach the disk before the journal
            # does; a crash must never find them back in queue/ half another message's.
            if not (reuse and self._pool.give(moved)):
                _remove(moved)
            self.forget_due(moved.name)
        self._journal.forget(moved.name for moved in gone)
        return errors

    def dead_letter(self, message_id: str, reason: str) -> None:
        home = self._home(message_id, self._queue)
        state = self.state(message_id)
        state.dead_reason = reason
        self.save_state(message_id, state)
        self._move(home, self._dead / message_id)
        self.forget_due(message_id)

    def retry(self, message_id: str, *, now: datetime | None = None) -> None:
        """Retry now: a dead letter moves back to queue/, a deferred message is due at once.

        Failed steps run again, succeeded ones do not; the retry window starts again. The due
        index says "now" first, so a running dispatcher's rescan notices it even while the
        message's previous attempt is still running, and a crash never leaves it later."""
        home = self._home(message_id)
        state = self.state(message_id)
        state.steps = {k: s for k, s in state.steps.items() if s.outcome == "succeeded"}
        state.attempts, state.next_attempt_at, state.last_error = 0, None, None
        state.dead_reason, state.retried_at = None, now or datetime.now(UTC)
        try:
            self._due.set(message_id, state.retried_at, durable=True)
        except OSError as exc:
            raise SpoolWriteError(f"message {message_id}: cannot index: {exc.strerror}") from exc
        self.save_state(message_id, state)
        if home.parent == self._dead:
            self._move(home, self._queue / message_id)

    def publish(self, writers: Sequence[SpoolWriter]) -> list[SpoolWriteError | None]:
        """Queue sealed messages (`SpoolWriter.seal`): rename each into queue/, then make every
        rename durable with one fsync of queue/. One error (or None) per writer, in order; a
        writer that could not be queued is aborted."""
        errors: list[SpoolWriteError | None] = []
        for writer in writers:
            try:
                os.rename(writer.directory, self._queue / writer.message_id)
                errors.append(None)
            except OSError as exc:  # that writer's caller is told, and no one else
                writer.discard()
                failure = SpoolWriteError(
                    f"message {writer.message_id}: cannot queue: {exc.strerror}"
                )
                failure.__cause__ = exc
                errors.append(failure)
        try:
            fsync_dir(self._queue)
        except OSError as exc:
            # The renames may or may not survive a crash. What is in queue/ is complete and will
            # be dispatched; the client, told 451, sends again: at least once, as SPEC §7 allows.
            for i, writer in enumerate(writers):
                if errors[i] is None:
                    failure = SpoolWriteError(f"message {writer.message_id}: cannot sync queue/")
                    failure.__cause__ = exc
                    errors[i] = failure
        return errors
