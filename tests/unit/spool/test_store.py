"""The spool on disk: durable commit, restart, recovery, dead letters, group commit (SPEC §7)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from inbound import datadir
from inbound.core.envelope import Connection, Envelope
from inbound.core.errors import InboundError
from inbound.core.ids import MessageIdGenerator
from inbound.core.verdicts import Verdict, Verdicts
from inbound.spool import commit, store
from inbound.spool.commit import GroupCommitter
from inbound.spool.store import (
    DispatchState,
    MessageNotFound,
    RulesNotFoundError,
    Spool,
    SpoolError,
    SpoolMeta,
    SpoolWriteError,
    StepRecord,
)
from tests.unavailable import unavailable

IDS = MessageIdGenerator()
RECEIVED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def make_meta(message_id: str, size: int) -> SpoolMeta:
    return SpoolMeta(
        message_id=message_id,
        envelope=Envelope("sender@example.org", ("a@example.com",)),
        connection=Connection.of("198.51.100.7", "mx.example.org"),
        received_at=RECEIVED,
        rules_digest="0" * 64,
        hostname="inbound-test",
        verdicts=Verdicts(spam=Verdict.PASS, virus=Verdict.PASS),
        size=size,
    )


def body_of(message_id: str) -> bytes:
    return b"Subject: test\r\n\r\n" + message_id.encode() * 100 + b"\r\n"


def spool_one(spool: Spool) -> str:
    message_id = IDS.next()
    writer = spool.open_writer(message_id)
    data = body_of(message_id)
    for start in range(0, len(data), 1000):
        writer.write(data[start : start + 1000])
    writer.commit(make_meta(message_id, writer.size))
    return message_id


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_commit_survives_a_restart(tmp_path: Path) -> None:
    message_id = spool_one(Spool(tmp_path))
    again = Spool(tmp_path)
    assert again.recover() == 0
    assert again.queued() == [message_id]
    assert again.depth() == (1, 0)
    assert again.message_path(message_id).joinpath("message.eml").read_bytes() == body_of(
        message_id
    )
    assert again.meta(message_id) == make_meta(message_id, len(body_of(message_id)))
    assert again.state(message_id) == DispatchState()
    assert entries(tmp_path / "queue" / message_id) == ["message.eml", "meta.json"]
    assert entries(tmp_path / "tmp") == []


def test_recover_deletes_what_was_never_committed(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    kept = spool_one(spool)
    crashed = spool.open_writer(IDS.next())
    crashed.write(b"half a message")
    (tmp_path / "tmp" / "stray-file").write_bytes(b"")
    (tmp_path / "queue" / kept / ".state.json.123.tmp").write_bytes(b"{")
    again = Spool(tmp_path)
    assert again.recover() == 2
    assert entries(tmp_path / "tmp") == []
    assert again.queued() == [kept]
    assert entries(tmp_path / "queue" / kept) == ["message.eml", "meta.json"]
    crashed.abort()  # only closes its file: the process that held it is gone in real life


def test_queued_is_sorted_by_time_and_ignores_foreign_entries(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    made = [spool_one(spool) for _ in range(5)]
    (tmp_path / "queue" / "README").write_text("not a message")
    assert spool.queued() == made == sorted(made)


def test_contents_can_be_read_before_commit(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    writer = spool.open_writer(IDS.next())
    writer.write(b"Subject: hi\r\n\r\n")
    assert writer.source().read_all() == b"Subject: hi\r\n\r\n"
    writer.write(b"body\r\n")
    assert writer.source().read_all() == b"Subject: hi\r\n\r\nbody\r\n"
    writer.commit(make_meta(writer.message_id, writer.size))
    with pytest.raises(SpoolError, match="closed"):
        writer.source()


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    writer = spool.open_writer(IDS.next())
    writer.write(b"x" * 100)
    assert writer.size == 100
    writer.abort()
    writer.abort()
    assert entries(tmp_path / "tmp") == []
    assert spool.queued() == []


def test_an_abort_once_sealing_started_leaves_the_message_to_the_committer(
    tmp_path: Path,
) -> None:
    # A client that resets the connection right after the final dot cancels the session in
    # the middle of its commit; its abort must not delete what a sealer thread is queueing.
    spool = Spool(tmp_path)
    writer = spool.open_writer(IDS.next())
    writer.write(b"Subject: hi\r\n\r\nbody\r\n")
    writer.seal(make_meta(writer.message_id, writer.size))
    writer.abort()  # the session, cancelled
    assert spool.publish([writer]) == [None]
    assert spool.queued() == [writer.message_id]
    assert Spool(tmp_path).recover() == 0


def test_an_aborted_writer_cannot_be_sealed(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    writer = spool.open_writer(IDS.next())
    writer.abort()
    with pytest.raises(SpoolError, match="closed"):
        writer.seal(make_meta(writer.message_id, 0))
    assert spool.queued() == []


def test_a_writer_is_closed_after_commit(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    writer = spool.open_writer(IDS.next())
    writer.commit(make_meta(writer.message_id, 0))
    with pytest.raises(SpoolError, match="closed"):
        writer.write(b"late")


def test_meta_must_describe_the_written_message(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    writer = spool.open_writer(IDS.next())
    writer.write(b"12345")
    with pytest.raises(ValueError, match="does not match"):
        writer.commit(make_meta(writer.message_id, 4))
    assert spool.queued() == []


def test_the_same_id_cannot_be_received_twice_at_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first = spool.open_writer(IDS.next())
    with pytest.raises(SpoolWriteError):
        spool.open_writer(first.message_id)
    first.write(b"still mine")
    first.commit(make_meta(first.message_id, 10))
    assert spool.queued() == [first.message_id]


def assert_nothing_spooled(root: Path, error: pytest.ExceptionInfo[SpoolWriteError]) -> None:
    assert isinstance(error.value.__cause__, OSError)
    assert isinstance(error.value, InboundError)
    assert entries(root / "queue") == []
    assert entries(root / "tmp") == []


def test_a_failing_write_raises_spool_write_error(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        unavailable("needs /dev/full")
    writer = Spool(tmp_path).open_writer(IDS.next())
    assert writer._file is not None
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, writer._file.fileno())  # the disk is now full for this writer
    finally:
        os.close(full)

    def fill_the_disk() -> None:
        for _ in range(4):
            writer.write(b"x" * 65536)

    with pytest.raises(SpoolWriteError) as error:
        fill_the_disk()
    assert_nothing_spooled(tmp_path, error)


def test_a_failing_fsync_raises_spool_write_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = Spool(tmp_path).open_writer(IDS.next())
    writer.write(b"hello")

    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(SpoolWriteError) as error:
        writer.commit(make_meta(writer.message_id, 5))
    assert_nothing_spooled(tmp_path, error)


def test_a_vanished_directory_raises_spool_write_error(tmp_path: Path) -> None:
    writer = Spool(tmp_path).open_writer(IDS.next())
    writer.write(b"hello")
    shutil.rmtree(tmp_path / "tmp" / writer.message_id)
    with pytest.raises(SpoolWriteError) as error:
        writer.commit(make_meta(writer.message_id, 5))
    assert_nothing_spooled(tmp_path, error)


@contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """Make a directory unwritable, even for root (who ignores permission bits)."""
    if os.geteuid() != 0:
        directory.chmod(0o500)
        try:
            yield
        finally:
            directory.chmod(0o700)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", directory], check=False).returncode:
        unavailable("root ignores permissions and cannot set the immutable flag here")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", directory], check=True)


def test_a_read_only_directory_raises_spool_write_error(tmp_path: Path) -> None:
    writer = Spool(tmp_path).open_writer(IDS.next())
    writer.write(b"hello")
    with read_only(tmp_path / "tmp" / writer.message_id), pytest.raises(SpoolWriteError) as error:
        writer.commit(make_meta(writer.message_id, 5))
    assert isinstance(error.value.__cause__, PermissionError)
    assert entries(tmp_path / "queue") == []
    # The clean-up could not delete in a read-only directory; recovery does it later.
    assert Spool(tmp_path).recover() == 1


def test_a_failing_queue_sync_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path)
    real = datadir.fsync_dir

    def fsync_dir(path: Path) -> None:
        if path == tmp_path / "queue":
            raise OSError(errno.EIO, "Input/output error")
        real(path)

    monkeypatch.setattr("inbound.spool.store.fsync_dir", fsync_dir)
    writer = spool.open_writer(IDS.next())
    with pytest.raises(SpoolWriteError, match="sync queue"):
        writer.commit(make_meta(writer.message_id, 0))
    # The client is told 451 and sends again; the complete copy is delivered too (at least once).
    assert spool.meta(writer.message_id).size == 0


def test_state_is_saved_atomically_and_survives_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    message_id = spool_one(spool)
    state = DispatchState(steps={"0:0": StepRecord("succeeded", 1, None, "CONTINUE")}, attempts=1)
    spool.save_state(message_id, state)
    state.attempts = 2
    spool.save_state(message_id, state)
    assert Spool(tmp_path).state(message_id) == state
    assert entries(tmp_path / "queue" / message_id) == ["message.eml", "meta.json", "state.json"]


def test_finish_removes_the_message(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    done, waiting = spool_one(spool), spool_one(spool)
    spool.finish(done)
    assert spool.queued() == [waiting]
    assert entries(tmp_path / "tmp") == []
    with pytest.raises(MessageNotFound):
        spool.meta(done)


def test_finishing_many_syncs_queue_once_and_fails_only_the_missing_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path)
    done = [spool_one(spool) for _ in range(5)]
    waiting = spool_one(spool)
    synced: list[Path] = []
    real = datadir.fsync_dir

    def fsync_dir(path: Path) -> None:
        synced.append(path)
        real(path)

    monkeypatch.setattr("inbound.spool.store.fsync_dir", fsync_dir)
    missing = IDS.next()
    errors = spool.finish_many([*done[:2], missing, *done[2:]])
    assert [type(e) for e in errors] == [type(None)] * 2 + [MessageNotFound] + [type(None)] * 3
    assert synced == [tmp_path / "queue"]  # one fsync for the batch, not one per message
    assert spool.queued() == [waiting]
    assert entries(tmp_path / "tmp") == []


def test_a_failing_sync_of_a_finish_batch_fails_every_message_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path)
    done = [spool_one(spool) for _ in range(3)]

    def fsync_dir(path: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("inbound.spool.store.fsync_dir", fsync_dir)
    errors = spool.finish_many(done)
    # Each caller is told (the scheduler forgets the message until a rescan): the rename may
    # not survive a crash, and the message is then delivered again (at least once).
    assert all(isinstance(e, SpoolWriteError) for e in errors)


def test_dead_letter_then_retry(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    message_id = spool_one(spool)
    spool.save_state(
        message_id,
        DispatchState(
            steps={
                "0:0": StepRecord("succeeded", 1),
                "1:0": StepRecord("failed", 9, "AccessDenied"),
            },
            attempts=9,
            next_attempt_at=RECEIVED,
            last_error="AccessDenied",
        ),
    )
    spool.dead_letter(message_id, "expired after 4 hours")
    assert (spool.queued(), spool.dead(), spool.depth()) == ([], [message_id], (0, 1))
    assert spool.message_path(message_id) == tmp_path / "dead" / message_id
    assert spool.state(message_id).dead_reason == "expired after 4 hours"
    assert spool.meta(message_id).message_id == message_id
    with pytest.raises(MessageNotFound, match=r"in queue$"):
        spool.dead_letter(message_id, "again")

    later = datetime(2024, 5, 3, tzinfo=UTC)
    spool.retry(message_id, now=later)
    assert (spool.queued(), spool.dead()) == ([message_id], [])
    assert spool.state(message_id) == DispatchState(
        steps={"0:0": StepRecord("succeeded", 1)}, attempts=0, retried_at=later
    )
    assert spool.message_path(message_id).joinpath("message.eml").read_bytes() == body_of(
        message_id
    )


def test_retry_of_a_deferred_message_makes_it_due_now(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    message_id = spool_one(spool)
    deferred = DispatchState(
        steps={"0:0": StepRecord("succeeded", 1), "0:1": StepRecord("failed", 2, "Throttling")},
        attempts=2,
        next_attempt_at=datetime(2024, 5, 3, tzinfo=UTC),
        last_error="Throttling",
    )
    spool.save_state(message_id, deferred)
    later = datetime(2024, 5, 2, 12, tzinfo=UTC)
    spool.retry(message_id, now=later)
    assert (spool.queued(), spool.dead()) == ([message_id], [])
    assert spool.state(message_id) == DispatchState(
        steps={"0:0": StepRecord("succeeded", 1)}, attempts=0, retried_at=later
    )
    with pytest.raises(MessageNotFound):
        spool.retry("0" * 39 + "z")


BAD_IDS = ["../x", "../../etc/passwd", "", "A" * 40, "0" * 39 + "/", "0" * 40]


@pytest.mark.parametrize("message_id", BAD_IDS)
@pytest.mark.parametrize(
    "operation", ["meta", "message_path", "state", "save_state", "finish", "dead_letter", "retry"]
)
def test_unknown_and_hostile_ids_raise_message_not_found(
    tmp_path: Path, operation: str, message_id: str
) -> None:
    spool = Spool(tmp_path)
    calls: dict[str, Callable[[], object]] = {
        "meta": lambda: spool.meta(message_id),
        "message_path": lambda: spool.message_path(message_id),
        "state": lambda: spool.state(message_id),
        "save_state": lambda: spool.save_state(message_id, DispatchState()),
        "finish": lambda: spool.finish(message_id),
        "dead_letter": lambda: spool.dead_letter(message_id, "x"),
        "retry": lambda: spool.retry(message_id),
    }
    with pytest.raises(MessageNotFound):
        calls[operation]()
    assert entries(tmp_path) == ["dead", "queue", "rules", "tmp"]


@pytest.mark.parametrize("message_id", BAD_IDS[:5])
def test_a_writer_refuses_hostile_ids(tmp_path: Path, message_id: str) -> None:
    with pytest.raises(MessageNotFound):
        Spool(tmp_path).open_writer(message_id)
    assert entries(tmp_path / "tmp") == []


def test_a_corrupt_meta_file_is_a_spool_error(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    message_id = spool_one(spool)
    (tmp_path / "queue" / message_id / "meta.json").write_text("{not json")
    with pytest.raises(SpoolError, match=r"meta\.json"):
        spool.meta(message_id)
    (tmp_path / "queue" / message_id / "meta.json").write_text('{"size": 3}')
    with pytest.raises(SpoolError, match=r"meta\.json"):
        spool.meta(message_id)


def test_rules_are_saved_once_by_digest(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    text = "rules:\r\n  - name: ünïcode\r\n"  # CRLF must survive: the digest is of the text
    digest = spool.save_rules(text)
    assert digest == hashlib.sha256(text.encode()).hexdigest()
    assert spool.save_rules(text) == digest
    assert entries(tmp_path / "rules") == [f"{digest}.txt"]
    assert Spool(tmp_path).load_rules(digest) == text
    for unknown in ("f" * 64, "../x", "F" * 64):
        with pytest.raises(RulesNotFoundError):
            spool.load_rules(unknown)


def test_a_40_mb_message_is_streamed_not_held(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    chunk = b"0123456789abcdef" * 4096  # 64 KB
    message_id = IDS.next()
    tracemalloc.start()
    try:
        writer = spool.open_writer(message_id)
        for _ in range(640):
            writer.write(chunk)
        writer.commit(make_meta(message_id, writer.size))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert writer.size == 40 * 1024 * 1024
    assert spool.message_path(message_id).joinpath("message.eml").stat().st_size == writer.size
    assert peak < 5 * 1024 * 1024, f"peak Python allocation {peak} bytes"


# Commits messages of random sizes forever, printing "ID SHA256" only after commit returns.
CHILD = """
import hashlib, os, sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from inbound.core.envelope import Connection, Envelope
from inbound.core.ids import MessageIdGenerator
from inbound.core.verdicts import Verdicts
from inbound.spool.store import Spool, SpoolMeta

spool, ids = Spool(Path(sys.argv[1])), MessageIdGenerator()
while True:
    message_id = ids.next()
    body = os.urandom(64) * (int.from_bytes(os.urandom(2)) % 5000)  # up to 320 KB
    writer = spool.open_writer(message_id)
    for start in range(0, len(body), 8192):
        writer.write(body[start : start + 8192])
    writer.commit(SpoolMeta(message_id, Envelope("s@example.org", ("r@example.com",)),
        Connection.of("192.0.2.1"), datetime.now(UTC), "0" * 64, "child", Verdicts(), len(body)))
    print(message_id, hashlib.sha256(body).hexdigest(), flush=True)
"""


def test_no_acknowledged_message_is_lost_when_killed(tmp_path: Path) -> None:
    acknowledged: dict[str, str] = {}
    for round_number in range(4):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        first = child.stdout.readline()  # the child is up and committing
        # A random moment within the next ~30 messages (a commit takes a few ms with fsync):
        # mid-write, between fsyncs, just after the rename, or just before the print.
        kill_delay = secrets.randbelow(100_000) / 1_000_000
        time.sleep(kill_delay)
        child.send_signal(signal.SIGKILL)
        rest, errors = child.communicate(timeout=30)
        assert first, f"round {round_number}: the child died before committing: {errors}"
        assert child.returncode == -signal.SIGKILL, errors
        # Every line was printed after its commit returned, including those left in the pipe;
        # the kill may cut the last one short (no newline yet): only whole lines count.
        whole = [first.rstrip("\n"), *rest.split("\n")[:-1]]
        acknowledged |= dict(line.split() for line in whole)
        context = f"round {round_number}, killed after {kill_delay:.6f} s"

        spool = Spool(tmp_path)
        spool.recover()
        assert entries(tmp_path / "tmp") == []
        queued = spool.queued()
        assert set(acknowledged) <= set(queued), context
        for message_id in queued:  # committed but not yet printed counts too: all complete
            meta = spool.meta(message_id)
            data = spool.message_path(message_id).joinpath("message.eml").read_bytes()
            assert meta.size == len(data), context
            if message_id in acknowledged:
                assert hashlib.sha256(data).hexdigest() == acknowledged[message_id]


class Gate:
    """Holds every fsync of one directory until released, as a slow disk would."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
        self.entered, self.release, self.calls = threading.Event(), threading.Event(), 0
        real = datadir.fsync_dir

        def fsync_dir(path: Path) -> None:
            if path == directory:
                self.calls += 1
                self.entered.set()
                self.release.wait(timeout=30)
            real(path)

        monkeypatch.setattr("inbound.spool.store.fsync_dir", fsync_dir)  # queue/, dead/
        monkeypatch.setattr("inbound.spool.writer.fsync_dir", fsync_dir)  # tmp/ID


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.005)


def test_group_commit_of_200_concurrent_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path)
    gate = Gate(monkeypatch, tmp_path / "queue")
    ids = [IDS.next() for _ in range(200)]
    broken = ids[77]

    async def main() -> list[BaseException | None]:
        committer = GroupCommitter(spool)
        committer.start()
        writers = [spool.open_writer(message_id) for message_id in ids]
        for writer in writers:
            writer.write(body_of(writer.message_id))
        shutil.rmtree(tmp_path / "tmp" / broken)  # the disk loses this one's directory
        commits = [committer.commit(w, make_meta(w.message_id, w.size)) for w in writers]
        results = asyncio.gather(*commits, return_exceptions=True)
        # The thread waits in its first fsync of queue/ while every other message waits for it.
        await until(
            lambda: (
                gate.entered.is_set()
                and committer._jobs.qsize() + len(spool.queued()) in (199, 200)
            ),
            "all are committing",
        )
        gate.release.set()
        done = await results
        await committer.close()
        return done

    results = asyncio.run(main())
    failed = {
        message_id: result
        for message_id, result in zip(ids, results, strict=True)
        if result is not None
    }
    assert list(failed) == [broken]
    assert isinstance(failed[broken], SpoolWriteError)
    assert spool.queued() == sorted(set(ids) - {broken})
    assert entries(tmp_path / "tmp") == []
    for message_id in spool.queued()[::37]:
        assert spool.message_path(message_id).joinpath("message.eml").read_bytes() == body_of(
            message_id
        )
    # One fsync of queue/ per batch: the first (all 200 when the thread woke after the last
    # commit came), and at most one more for all the others.
    assert gate.calls in (1, 2)


def test_group_committer_lifecycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path)
    early, first, second, third, late = (spool.open_writer(IDS.next()) for _ in range(5))
    gate = Gate(monkeypatch, tmp_path / "tmp" / first.message_id)

    def commit(committer: GroupCommitter, writer: store.SpoolWriter) -> Coroutine[None, None, None]:
        return committer.commit(writer, make_meta(writer.message_id, 0))

    async def main() -> None:
        committer = GroupCommitter(spool)
        with pytest.raises(SpoolError, match="not running"):
            await commit(committer, early)
        committer.start()
        first_task = asyncio.create_task(commit(committer, first))
        await until(gate.entered.is_set, "the commit thread holds the first message")
        second_task = asyncio.create_task(commit(committer, second))
        third_task = asyncio.create_task(commit(committer, third))
        await asyncio.sleep(0)  # both are submitted, behind the first
        second_task.cancel()
        await until(second_task.done, "the cancellation reached the committer")
        gate.release.set()
        await committer.close()  # drains: the third was taken before close
        await first_task
        await third_task
        with pytest.raises(asyncio.CancelledError):
            await second_task
        with pytest.raises(SpoolError, match="not running"):
            await commit(committer, late)

    asyncio.run(main())
    early.abort()
    late.abort()
    # The cancelled caller never answered 250, so its message was dropped, not queued.
    assert spool.queued() == sorted([first.message_id, third.message_id])
    assert entries(tmp_path / "tmp") == []


def test_a_commit_cancelled_while_sealing_leaves_nothing_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client left right after the final dot while its message was being fsynced: it never
    # saw a 250 and will send again, so the message must not be delivered from here as well.
    spool = Spool(tmp_path)
    writer = spool.open_writer(IDS.next())
    writer.write(b"Subject: hi\r\n\r\nbody\r\n")
    gate = Gate(monkeypatch, tmp_path / "tmp" / writer.message_id)

    async def main() -> None:
        committer = GroupCommitter(spool)
        committer.start()
        task = asyncio.create_task(
            committer.commit(writer, make_meta(writer.message_id, writer.size))
        )
        await until(gate.entered.is_set, "sealing has started")
        task.cancel()
        await asyncio.sleep(0.05)
        gate.release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        await committer.close()

    asyncio.run(main())
    assert spool.queued() == []
    assert Spool(tmp_path).recover() == 0


def test_a_small_message_touches_the_disk_only_when_committed(tmp_path: Path) -> None:
    """Up to MEMORY_BYTES a message is kept in memory: no directory or file while it arrives
    (none at all if it is refused), its checks read it from memory, its bytes are written once;
    a bigger one goes to its file as it arrives, so a full disk still shows inside DATA."""
    spool = Spool(tmp_path)
    small = body_of(IDS.next())
    big = b"Subject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * 3000  # 240 KB

    async def main() -> list[str]:
        committer = GroupCommitter(spool)
        committer.start()
        seen = []
        refused = committer.open_writer(IDS.next())
        refused.write(small)
        refused.abort()
        seen.append(f"refused: {entries(tmp_path / 'tmp')}")
        writers = [committer.open_writer(IDS.next()) for _ in (small, big)]
        for writer, data in zip(writers, (small, big), strict=True):
            for start in range(0, len(data), 1000):
                writer.write(data[start : start + 1000])
            seen.append(f"{writer.source().read_all() == data}: {entries(tmp_path / 'tmp')}")
        for writer in writers:
            await committer.commit(writer, make_meta(writer.message_id, writer.size))
        await committer.close()
        return [line.replace(writers[1].message_id, "BIG") for line in seen]

    assert asyncio.run(main()) == ["refused: []", "True: []", "True: ['BIG']"]
    small_id, big_id = spool.queued()
    assert spool.source(small_id).read_all() == small
    assert spool.source(big_id).read_all() == big
    assert entries(tmp_path / "queue" / small_id) == ["message.eml", "meta.json"]
    assert entries(tmp_path / "tmp") == []
    assert len(small) <= commit.MEMORY_BYTES < len(big)
