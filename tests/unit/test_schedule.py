"""The scheduler on a fake clock (SPEC section 7, at least once): the retry schedule, dead
letters at --max-retry-age, restarts, `inbound spool retry`, and no state file read per tick.

The spool is real (files under tmp_path); the clock and the scheduler's sleep are fake: the
sleep moves the clock forward by what it was asked to wait, once no attempt is running, so
four hours of retries take a fraction of a second and every time is exact.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from inbound.core.envelope import Connection, Envelope
from inbound.core.errors import TransientActionError
from inbound.core.ids import MessageIdGenerator
from inbound.core.verdicts import Verdict, Verdicts
from inbound.observe.metrics import DispatchMetrics
from inbound.schedule import Delivered, Failed, Outcome, Scheduler
from inbound.spool.due import DueIndex
from inbound.spool.retry import RetryPolicy
from inbound.spool.store import DispatchState, Spool, SpoolMeta

ROOT = Path(__file__).resolve().parents[2]
IDS = MessageIdGenerator()
# Real now: `inbound spool retry` (a real process) stamps its retry with the real clock.
T0 = datetime.now(UTC).replace(microsecond=0)
DEADLINE = 30.0  # real seconds, for anything a test waits for


class FakeClock:
    """`now` and a `sleep` that moves it: time passes only while the scheduler sleeps with no
    attempt running (the attempts take no time), as when no one else needs the CPU."""

    def __init__(self, start: datetime, end: datetime | None = None) -> None:
        self.current = start
        self.end = end  # time stops there (the process is killed at that moment)
        self.sleeps = 0
        self.busy: Callable[[], bool] = lambda: False

    def now(self) -> datetime:
        return self.current

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        if self.busy():  # an attempt runs (its spool I/O in a thread): time stands still
            while self.busy():
                await asyncio.sleep(0.001)
            return  # and the scheduler looks again at what is due
        later = self.current + timedelta(seconds=seconds)
        if self.end is not None and later > self.end:
            self.current = max(self.current, self.end)
            await asyncio.Event().wait()  # until the scheduler is woken or stopped
        self.current = later
        await asyncio.sleep(0)


@dataclass
class Runner:
    """The dispatcher's part, faked: records when each attempt ran, fails or delivers."""

    spool: Spool
    clock: FakeClock
    deliver: bool = False
    attempts: list[tuple[str, datetime]] = field(default_factory=list)
    gate: asyncio.Event | None = None  # the next attempt waits for it

    async def __call__(self, message_id: str) -> Outcome:
        self.attempts.append((message_id, self.clock.now()))
        meta = await asyncio.to_thread(self.spool.meta, message_id)
        state = await asyncio.to_thread(self.spool.state, message_id)
        if self.gate is not None:
            gate, self.gate = self.gate, None
            await gate.wait()
        if self.deliver:
            return Delivered(meta, state)
        return Failed(meta, state, TransientActionError("function gate failed: Flaky"))

    def offsets(self, message_id: str) -> list[float]:
        """Seconds from T0 of each attempt at `message_id`."""
        return [(at - T0).total_seconds() for m, at in self.attempts if m == message_id]


def make_meta(message_id: str, size: int, received_at: datetime = T0) -> SpoolMeta:
    return SpoolMeta(
        message_id=message_id,
        envelope=Envelope("sender@example.org", ("a@example.com",)),
        connection=Connection.of("198.51.100.7", "mx.example.org"),
        received_at=received_at,
        rules_digest="0" * 64,
        hostname="inbound-test",
        verdicts=Verdicts(spam=Verdict.PASS, virus=Verdict.PASS),
        size=size,
    )


def spool_one(spool: Spool) -> str:
    message_id = IDS.next()
    writer = spool.open_writer(message_id)
    writer.write(b"Subject: scheduled\r\n\r\nHello.\r\n")
    writer.commit(make_meta(message_id, writer.size))
    return message_id


@dataclass
class Running:
    scheduler: Scheduler
    runner: Runner
    clock: FakeClock
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def until(self, what: str, condition: Callable[[], bool]) -> None:
        """Wait (real time, with a deadline) until `condition()` holds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        while not condition():
            if self.task.done():
                self.task.result()  # the scheduler died: say why
                raise AssertionError(f"the scheduler stopped before {what}")
            if loop.time() > deadline:
                raise AssertionError(
                    f"no {what} in {DEADLINE} s (fake clock at {self.clock.now()})"
                )
            await asyncio.sleep(0.001)

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, DEADLINE)


def start(spool: Spool, clock: FakeClock, runner: Runner | None = None, **kwargs: Any) -> Running:
    runner = runner or Runner(spool, clock)
    scheduler = Scheduler(
        spool, runner, metrics=DispatchMetrics(), clock=clock.now, sleep=clock.sleep, **kwargs
    )
    clock.busy = lambda: scheduler.in_flight > 0
    scheduler.load_queue()
    stop = asyncio.Event()
    return Running(scheduler, runner, clock, stop, asyncio.create_task(scheduler.run(stop)))


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 2 * DEADLINE))


# -- the schedule --------------------------------------------------------------------------------


def test_retries_double_from_the_delay_to_the_cap_and_dead_letter_at_the_max_age(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool")
    message_id = spool_one(spool)
    clock = FakeClock(T0)
    dead_at = []
    dead_letter = spool.dead_letter

    def dead_letter_now(message_id: str, reason: str) -> None:
        dead_at.append(clock.now())
        dead_letter(message_id, reason)

    spool.dead_letter = dead_letter_now  # type: ignore[method-assign]

    async def test() -> None:
        # The defaults: --retry-delay 60s, --max-retry-delay 1h, --max-retry-age 4h.
        running = start(spool, clock, rescan_every=600.0)
        dead = spool.root / "dead" / message_id
        await running.until("dead letter", dead.is_dir)
        offsets = running.runner.offsets(message_id)
        # Then 60 s, doubling, capped at 1 h; the retry after 10980 s would fall after the
        # deadline (14580 s): it runs at the deadline, and its failure dead-letters at once.
        assert offsets == [0, 60, 180, 420, 900, 1860, 3780, 7380, 10980, 14400]
        assert dead_at == [T0 + timedelta(hours=4)]
        await running.finish()

    run(test)
    state = spool.state(message_id)
    assert state.dead_reason == "retries expired: function gate failed: Flaky"
    assert state.attempts == 10
    assert not (spool.root / "queue" / message_id).exists()


def test_the_schedule_follows_the_flags(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    message_id = spool_one(spool)
    policy = RetryPolicy(max_age=timedelta(minutes=10), base_delay=30.0, max_delay=120.0)

    async def test() -> None:
        clock = FakeClock(T0)
        running = start(spool, clock, policy=policy)
        await running.until("dead letter", (spool.root / "dead" / message_id).is_dir)
        assert running.runner.offsets(message_id) == [0, 30, 90, 210, 330, 450, 570, 600]
        await running.finish()

    run(test)


def test_a_restart_keeps_the_schedule(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    message_id = spool_one(spool)
    # The first process is killed 100 s after receipt.
    clock = FakeClock(T0, end=T0 + timedelta(seconds=100))

    async def before() -> None:
        running = start(spool, clock)
        await running.until("the kill", lambda: clock.now() == clock.end)
        assert running.runner.offsets(message_id) == [0, 60]
        await running.finish()

    run(before)
    assert spool.state(message_id).next_attempt_at == T0 + timedelta(seconds=180)

    # A new process: a new spool object and a new scheduler, 100 s after receipt.
    clock = FakeClock(T0 + timedelta(seconds=100))
    again = Spool(tmp_path / "spool")

    async def after() -> None:
        running = start(again, clock)
        assert running.scheduler.in_flight == 0  # not at once: at 180 s
        await running.until("two more attempts", lambda: len(running.runner.attempts) == 2)
        assert running.runner.offsets(message_id) == [180, 420]
        await running.finish()

    run(after)


# -- a retry is never dropped --------------------------------------------------------------------


@pytest.mark.parametrize("how", ["notify", "spool_retry"])
def test_a_retry_due_while_the_previous_attempt_runs_runs_after_it(
    tmp_path: Path, how: str
) -> None:
    """Due again (queued again, or `inbound spool retry`) while its attempt is still running:
    the retry waits behind that attempt and then runs, at once, not an hour later."""
    spool = Spool(tmp_path / "spool")
    message_id = spool_one(spool)
    policy = RetryPolicy(base_delay=3600.0, max_delay=3600.0)

    async def test() -> None:
        clock = FakeClock(T0)
        gate = asyncio.Event()
        runner = Runner(spool, clock, gate=gate)
        running = start(spool, clock, runner, policy=policy)
        await running.until("the first attempt", lambda: len(runner.attempts) == 1)
        if how == "notify":
            sleeps = clock.sleeps
            running.scheduler.notify(message_id)
            # It has looked at what is due, and gone back to waiting.
            await running.until("the scheduler to wait again", lambda: clock.sleeps > sleeps)
        else:
            shell = Spool(spool.root)  # as `inbound spool retry` has its own
            await asyncio.to_thread(shell.retry, message_id, now=clock.now())
            await running.scheduler.rescan()  # as it does every 5 s
        assert running.scheduler.in_flight == 1  # the first attempt still runs
        gate.set()
        await running.until("the second attempt", lambda: len(runner.attempts) == 2)
        assert runner.offsets(message_id) == [0, 0]
        await running.finish()

    run(test)


def test_spool_retry_of_a_dead_letter_from_a_shell_is_picked_up(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "data" / "spool")
    message_id = spool_one(spool)
    policy = RetryPolicy(max_age=timedelta(minutes=2), base_delay=60.0)

    async def test() -> None:
        clock = FakeClock(T0)
        running = start(spool, clock, policy=policy)
        dead = spool.root / "dead" / message_id
        await running.until("dead letter", dead.is_dir)
        running.runner.deliver = True  # the function is fixed
        data_dir = str(tmp_path / "data")
        retried = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "inbound", "spool", "--data-dir", data_dir, "retry", message_id],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=False,
        )
        assert retried.returncode == 0, retried.stderr
        assert retried.stdout.strip() == f"{message_id}: queued for retry"
        # The next rescan (every 5 s of the fake clock) finds it due and runs it.
        await running.until("delivery", lambda: not (spool.root / "queue" / message_id).exists())
        assert len(running.runner.offsets(message_id)) == 4  # 0, 60, 120, and the retry
        assert not dead.exists()
        await running.finish()

    run(test)


# -- 10,000 waiting messages ---------------------------------------------------------------------


def waiting(spool: Spool, count: int, due: datetime) -> list[str]:
    """`count` deferred messages, written as the spool writes them but without fsync (10,000
    fsynced messages take a minute): message.eml, meta.json, state.json and a due entry."""
    index = DueIndex(spool.root / "due")
    ids = []
    for _ in range(count):
        message_id = IDS.next()
        home = spool.root / "queue" / message_id
        home.mkdir()
        (home / "message.eml").write_bytes(b"Subject: waiting\r\n\r\nHello.\r\n")
        (home / "meta.json").write_text(json.dumps(make_meta(message_id, 29).to_json()))
        state = DispatchState(attempts=3, next_attempt_at=due, last_error="gate failed")
        (home / "state.json").write_text(json.dumps(state.to_json()))
        index.set(message_id, due)
        ids.append(message_id)
    return ids


@dataclass
class Reads:
    """Files opened, and folders listed, under one directory (Python's audit events)."""

    root: str
    opened: list[str] = field(default_factory=list)
    listed: list[str] = field(default_factory=list)


_WATCHING: list[Reads] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    for reads in _WATCHING:
        if event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            path = os.fsdecode(args[0])
            if path.startswith(reads.root):
                reads.opened.append(path)
        elif event in ("os.listdir", "os.scandir") and args and args[0] is not None:
            path = os.fsdecode(args[0])
            if path.startswith(reads.root):
                reads.listed.append(path)


sys.addaudithook(_audit)  # audit hooks cannot be removed: this one only looks while watching


@contextmanager
def watching(root: Path) -> Iterator[Reads]:
    reads = Reads(str(root))
    _WATCHING.append(reads)
    try:
        yield reads
    finally:
        _WATCHING.remove(reads)


def test_ten_thousand_waiting_messages_are_not_read_each_tick(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    ids = waiting(spool, 10_000, T0 + timedelta(hours=1))
    states = 0
    read_state = spool.state

    def counted(message_id: str) -> DispatchState:
        nonlocal states
        states += 1
        return read_state(message_id)

    spool.state = counted  # type: ignore[method-assign]

    async def test() -> None:
        clock = FakeClock(T0)
        with watching(spool.root) as reads:
            running = start(spool, clock)  # load_queue: two listings
            # Two minutes of the fake clock: 120 ticks of 1 s, a rescan every 5 s.
            await running.until("two minutes", lambda: clock.now() >= T0 + timedelta(minutes=2))
            await running.finish()
        assert running.scheduler.in_flight == 0
        assert running.runner.attempts == []
        assert states == 0
        assert reads.opened == []  # no state.json, meta.json or anything else
        queue_listings = reads.listed.count(str(spool.root / "queue"))
        assert 24 <= queue_listings <= 26, queue_listings  # start-up and every rescan: once each
        assert len(reads.listed) <= 3 * queue_listings  # queue/, due/, dead/

    run(test)
    assert sorted(spool.due()) == ids  # all still waiting
