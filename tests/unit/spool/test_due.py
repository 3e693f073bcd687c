"""The spool's due index (spool/due/TIME.ID): what deferring, finishing, dead-lettering and
`inbound spool retry` leave there, as another process (a restart, a shell) lists it."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from inbound.core.ids import MessageIdGenerator
from inbound.spool.due import DueIndex, entry_name
from inbound.spool.store import DispatchState, Spool
from tests.unit.spool.test_store import spool_one

IDS = MessageIdGenerator()
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def deferred(at: datetime) -> DispatchState:
    return DispatchState(attempts=1, next_attempt_at=at, last_error="gate failed")


def names(spool: Spool) -> list[str]:
    due = spool.root / "due"
    return sorted(os.listdir(due)) if due.is_dir() else []


def test_a_deferral_is_one_entry_named_by_its_time_and_another_process_reads_it(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path)
    message_id = spool_one(spool)
    assert not (tmp_path / "due").exists()  # made by the first deferral
    spool.defer(message_id, deferred(T0 + timedelta(minutes=1)))
    spool.defer(message_id, deferred(T0 + timedelta(minutes=3)))
    assert names(spool) == [f"20240501T120300.000000Z.{message_id}"]
    assert Spool(tmp_path).due() == {message_id: T0 + timedelta(minutes=3)}
    assert Spool(tmp_path).state(message_id).next_attempt_at == T0 + timedelta(minutes=3)
    due = tmp_path / "due"
    assert stat.S_IMODE(due.stat().st_mode) == 0o700
    assert stat.S_IMODE((due / names(spool)[0]).stat().st_mode) == 0o600


def test_finish_and_dead_letter_remove_the_entry(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    done, dead = spool_one(spool), spool_one(spool)
    for message_id in (done, dead):
        spool.defer(message_id, deferred(T0))
    spool.finish(done)
    spool.dead_letter(dead, "retries expired: gate failed")
    assert names(spool) == []
    assert Spool(tmp_path).due() == {}


def test_spool_retry_from_another_process_makes_it_due_now(tmp_path: Path) -> None:
    running = Spool(tmp_path)  # the receiver's spool object
    waiting, dead = spool_one(running), spool_one(running)
    running.defer(waiting, deferred(T0 + timedelta(hours=1)))
    running.defer(dead, deferred(T0 + timedelta(hours=1)))
    running.dead_letter(dead, "retries expired: gate failed")

    shell = Spool(tmp_path)  # `inbound spool retry`
    shell.retry(waiting, now=T0 + timedelta(minutes=5))
    shell.retry(dead, now=T0 + timedelta(minutes=6))
    assert running.due() == {
        waiting: T0 + timedelta(minutes=5),
        dead: T0 + timedelta(minutes=6),
    }
    # Its next attempt fails: deferred again, the entry moves (one rename, no second entry).
    running.defer(waiting, deferred(T0 + timedelta(hours=2)))
    assert Spool(tmp_path).due()[waiting] == T0 + timedelta(hours=2)
    assert len(names(running)) == 2


def test_a_retry_that_crossed_a_deferral_keeps_the_earlier_entry(tmp_path: Path) -> None:
    receiver, shell = Spool(tmp_path), Spool(tmp_path)
    message_id = spool_one(receiver)
    receiver.defer(message_id, deferred(T0 + timedelta(minutes=1)))
    receiver.due()  # the receiver has listed the folder
    # An operator retries while the message's attempt runs; then the attempt defers it.
    shell.retry(message_id, now=T0 + timedelta(minutes=2))
    receiver.defer(message_id, deferred(T0 + timedelta(hours=1)))
    assert len(names(receiver)) == 2
    assert receiver.due() == {message_id: T0 + timedelta(minutes=2)}  # the retry stands
    assert len(names(receiver)) == 1  # and the listing removed the other


def test_foreign_files_are_ignored(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    message_id = spool_one(spool)
    spool.defer(message_id, deferred(T0))
    for foreign in ("README", f"junk.{message_id}", "20240501T120000.000000Z.not-an-id"):
        (tmp_path / "due" / foreign).write_bytes(b"")
    assert Spool(tmp_path).due() == {message_id: T0}


def test_entry_names_sort_by_time_whatever_the_offset() -> None:
    message_id = IDS.next()
    plus_two = T0.astimezone(timezone(timedelta(hours=2)))
    assert entry_name(message_id, plus_two) == entry_name(message_id, T0)
    times = [T0 + timedelta(seconds=s) for s in (0.5, 59, 3600, 86400 * 40)]
    assert sorted(entry_name(message_id, t) for t in times) == [
        entry_name(message_id, t) for t in times
    ]
    index = DueIndex(Path("/nonexistent"))
    assert index.read() == {}
