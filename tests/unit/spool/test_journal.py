"""The spool's step journal (issue 13): succeeded dispatch steps recorded in batches in one
file instead of a state.json per message; a torn tail is ignored, finished messages forgotten."""

from __future__ import annotations

from pathlib import Path

import pytest

from inbound.core.steps import StepRecord
from inbound.spool import journal
from inbound.spool.store import DispatchState, Spool
from tests.unit.spool.test_store import entries, spool_one

FIRST = StepRecord("succeeded", 1, None, None)
ASKED = StepRecord("succeeded", 3, None, "STOP_RULE")


def test_recorded_steps_are_in_the_state_of_a_restarted_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.recover()
    message_id = spool_one(spool)
    spool.record_steps([(message_id, "0:0", FIRST), (message_id, "0:1", ASKED)])
    assert "state.json" not in entries(tmp_path / "queue" / message_id)  # no state file
    for reader in (spool, Spool(tmp_path)):  # the owner, and `inbound spool show`
        assert reader.state(message_id) == DispatchState({"0:0": FIRST, "0:1": ASKED})
    restarted = Spool(tmp_path)
    restarted.recover()
    assert restarted.state(message_id).steps == {"0:0": FIRST, "0:1": ASKED}


def test_a_torn_tail_is_ignored_and_cut_before_the_next_append(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.recover()
    message_id = spool_one(spool)
    spool.record_steps([(message_id, "0:0", FIRST)])
    whole = journal.encode(message_id, "0:1", ASKED)
    path = tmp_path / journal.NAME
    with path.open("ab") as f:  # a SIGKILL in the middle of an append
        f.write(whole[: len(whole) // 2])
    assert Spool(tmp_path).state(message_id).steps == {"0:0": FIRST}

    restarted = Spool(tmp_path)
    restarted.recover()
    restarted.record_steps([(message_id, "1:0", ASKED)])
    assert Spool(tmp_path).state(message_id).steps == {"0:0": FIRST, "1:0": ASKED}
    assert path.read_bytes() == journal.encode(message_id, "0:0", FIRST) + journal.encode(
        message_id, "1:0", ASKED
    )


def test_a_record_with_a_bad_checksum_ends_the_journal(tmp_path: Path) -> None:
    good = journal.encode("m1", "0:0", FIRST)
    bad = bytearray(journal.encode("m1", "0:1", ASKED))
    bad[-3] ^= 0x01  # a flipped bit inside the JSON
    records, end = journal.parse(good + bytes(bad) + journal.encode("m1", "0:2", FIRST))
    assert records == {"m1": {"0:0": FIRST}}
    assert end == len(good)
    assert journal.parse(b"not a record\n" + good) == ({}, 0)


def test_finished_messages_leave_the_journal(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.recover()
    done, deferred = spool_one(spool), spool_one(spool)
    spool.record_steps([(done, "0:0", FIRST), (deferred, "0:0", FIRST)])
    spool.finish(done)
    restarted = Spool(tmp_path)
    restarted.recover()  # the finished message's record is dropped
    assert (tmp_path / journal.NAME).read_bytes() == journal.encode(deferred, "0:0", FIRST)
    assert restarted.state(deferred).steps == {"0:0": FIRST}


def test_the_owner_rewrites_a_grown_journal_without_finished_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "COMPACT_BYTES", 2000)
    spool = Spool(tmp_path)
    spool.recover()
    kept = spool_one(spool)
    spool.record_steps([(kept, "0:0", FIRST)])
    for _ in range(40):  # messages that finish, as most do
        gone = spool_one(spool)
        spool.record_steps([(gone, "0:0", FIRST)])
        spool.finish(gone)
    assert (tmp_path / journal.NAME).stat().st_size < 2000 + 200
    assert Spool(tmp_path).state(kept).steps == {"0:0": FIRST}
    spool.record_steps([(kept, "0:1", ASKED)])
    assert Spool(tmp_path).state(kept).steps == {"0:0": FIRST, "0:1": ASKED}
