"""The pool of reused message folders: no new inode per message, and the same guarantees
(SPEC §7: what got a 250 is kept whole, what was delivered is not delivered again)."""

from __future__ import annotations

import hashlib
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inbound.core.ids import MessageIdGenerator
from inbound.spool import pool
from inbound.spool.store import DispatchState, Spool, SpoolWriteError, StepRecord
from tests.unit.spool.test_store import entries, make_meta

IDS = MessageIdGenerator()
MEMORY = 64 * 1024  # as the group committer keeps small messages


def commit(spool: Spool, body: bytes, *, memory: int = MEMORY) -> str:
    message_id = IDS.next()
    writer = spool.open_writer(message_id, memory=memory)
    for start in range(0, len(body), 8192):
        writer.write(body[start : start + 8192])
    writer.commit(make_meta(message_id, len(body)))
    return message_id


def stored(spool: Spool, message_id: str) -> bytes:
    with spool.source(message_id).open() as f:
        return f.read()


def inodes(spool: Spool, message_id: str) -> tuple[int, int, int]:
    home = spool.message_path(message_id)
    return tuple(p.stat().st_ino for p in (home, home / "message.eml", home / "meta.json"))  # type: ignore[return-value]


def test_a_delivered_messages_folder_and_files_hold_the_next_message(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first = commit(spool, b"Subject: long\r\n\r\n" + b"x" * 5000 + b"\r\n")
    used = inodes(spool, first)
    assert spool.finish_many([first]) == [None]
    assert entries(tmp_path / "queue") == []

    body = b"Subject: short\r\n\r\nHi.\r\n"  # shorter than the old bytes: cut to length
    second = commit(spool, body)
    assert inodes(spool, second) == used, "no new folder or file for the second message"
    assert stored(spool, second) == body
    assert spool.meta(second) == make_meta(second, len(body))
    assert spool.state(second) == DispatchState()
    assert entries(tmp_path / "pool") == []  # taken out of the pool, not shared
    again = Spool(tmp_path)  # and so it stays after a restart
    again.recover()
    assert again.queued() == [second]
    assert stored(again, second) == body


def test_a_large_message_streams_into_a_reused_folder(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first = commit(spool, b"Subject: a\r\n\r\nshort\r\n")
    spool.finish_many([first])
    body = b"Subject: big\r\n\r\n" + secrets.token_bytes(300 * 1024)  # spills past MEMORY
    second = commit(spool, body)
    assert stored(spool, second) == body
    spool.finish_many([second])
    third = commit(spool, b"Subject: c\r\n\r\nafter a big one\r\n", memory=0)
    assert stored(spool, third) == b"Subject: c\r\n\r\nafter a big one\r\n"


def test_a_folder_with_a_dispatch_state_is_not_reused(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first = commit(spool, b"Subject: a\r\n\r\nx\r\n")
    state = DispatchState(steps={"0:0": StepRecord("succeeded", 1)})
    spool.save_state(first, state)
    spool.finish_many([first])
    assert not (tmp_path / "pool").is_dir() or entries(tmp_path / "pool") == []
    second = commit(spool, b"Subject: b\r\n\r\ny\r\n")
    assert spool.state(second) == DispatchState(), "no step of another message is done"


def test_a_deleted_message_is_gone_not_pooled(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    message_id = commit(spool, b"Subject: secret\r\n\r\nx\r\n")
    spool.finish(message_id)  # `inbound spool delete` and the committer's withdrawal
    assert not (tmp_path / "pool").is_dir() or entries(tmp_path / "pool") == []


def test_two_processes_never_take_the_same_folder(tmp_path: Path) -> None:
    supervisor, worker_a, worker_b = Spool(tmp_path), Spool(tmp_path), Spool(tmp_path)
    supervisor.finish_many([commit(supervisor, b"Subject: a\r\n\r\nx\r\n")])
    taken = [worker.take_folder(tmp_path / "tmp" / IDS.next()) for worker in (worker_a, worker_b)]
    assert sorted(taken) == [False, True]


# Commits messages of random sizes, small and large, and delivers most of them soon after, so
# folders are reused all the time: "A ID SHA256" once a commit returned (the 250); "f ID ..."
# before a delivery (finish_many) and "F ID ..." once it returned.
CHILD = """
import hashlib, os, sys
from pathlib import Path
from inbound.core.ids import MessageIdGenerator
from inbound.spool import pool
from inbound.spool.store import Spool
from tests.unit.spool.test_store import make_meta

spool, ids, queued = Spool(Path(sys.argv[1])), MessageIdGenerator(), []
while True:
    message_id = ids.next()
    body = os.urandom(64) * (int.from_bytes(os.urandom(2)) % 1500)  # up to 96 KB
    writer = spool.open_writer(message_id, memory=64 * 1024)
    for start in range(0, len(body), 8192):
        writer.write(body[start : start + 8192])
    writer.commit(make_meta(message_id, len(body)))
    print("A", message_id, hashlib.sha256(body).hexdigest(), flush=True)
    queued.append(message_id)
    if len(queued) >= 3:
        done, queued = queued[:2], queued[2:]
        print("f", *done, flush=True)
        assert spool.finish_many(done) == [None, None]
        print("F", *done, flush=True)
"""


def test_reused_folders_lose_nothing_and_deliver_nothing_twice_when_killed(
    tmp_path: Path,
) -> None:
    acknowledged: dict[str, str] = {}
    finished: set[str] = set()
    finishing: set[str] = set()  # a delivery under way when killed: gone or not, either is right
    root = Path(__file__).resolve().parents[3]
    for round_number in range(4):
        with subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=root,
        ) as child:
            assert child.stdout is not None
            assert child.stderr is not None
            first = child.stdout.readline()
            kill_delay = 0.05 + secrets.randbelow(100_000) / 1_000_000
            time.sleep(kill_delay)
            child.send_signal(signal.SIGKILL)
            # Read through the same buffered stream as `first`: `communicate` would read the
            # pipe itself and miss the lines `readline` had already buffered.
            rest, errors = child.stdout.read(), child.stderr.read()
            child.wait(timeout=30)
        assert first, f"round {round_number}: the child died before committing: {errors}"
        assert child.returncode == -signal.SIGKILL, errors
        for line in [first.rstrip("\n"), *rest.split("\n")[:-1]]:
            kind, *fields = line.split()
            if kind == "A":
                acknowledged[fields[0]] = fields[1]
            elif kind == "f":
                finishing = set(fields)
            else:
                finished.update(fields)
        context = f"round {round_number}, killed after {kill_delay:.6f} s"

        spool = Spool(tmp_path)
        spool.recover()
        queued = set(spool.queued())
        assert set(acknowledged) - finished - finishing <= queued, context
        assert not queued & finished, f"{context}: a delivered message is queued again"
        for message_id in queued:  # complete, and its own bytes, never a reused folder's
            data = stored(spool, message_id)
            assert spool.meta(message_id).size == len(data), context
            if message_id in acknowledged:
                assert hashlib.sha256(data).hexdigest() == acknowledged[message_id], context
        spool.finish_many(sorted(queued))  # delivered: into the pool for the next round
        finished |= queued | finishing
        finishing = set()
    assert len(finished) > 20, "the rounds delivered and reused folders"


def test_the_pool_keeps_a_bounded_number_of_small_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool, "MAX_FREE", 2)
    monkeypatch.setattr(pool, "MAX_BYTES", 1000)
    spool = Spool(tmp_path)
    small = [commit(spool, b"Subject: s\r\n\r\nx\r\n") for _ in range(3)]
    big = commit(spool, b"Subject: big\r\n\r\n" + b"x" * 2000 + b"\r\n")
    assert spool.finish_many([big, *small]) == [None] * 4
    assert len(entries(tmp_path / "pool")) == 2, "the big one and one past MAX_FREE deleted"
    assert entries(tmp_path / "tmp") == []


def test_a_pooled_folder_missing_a_file_fails_that_message_only(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.finish_many([commit(spool, b"Subject: a\r\n\r\nx\r\n")])
    (folder,) = (tmp_path / "pool").iterdir()
    (folder / "meta.json").unlink()  # not made again: its entry would not be fsynced
    with pytest.raises(SpoolWriteError):
        commit(spool, b"Subject: b\r\n\r\ny\r\n")
    assert entries(tmp_path / "tmp") == []
    assert spool.queued() == []
    third = commit(spool, b"Subject: c\r\n\r\nz\r\n")  # a new folder, as before the pool
    assert stored(spool, third) == b"Subject: c\r\n\r\nz\r\n"
