"""The batcher: blocking calls of asyncio tasks run in batches by one thread (inbound.batch)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence

import pytest

from inbound.batch import Batcher

DEADLINE = 10.0


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), DEADLINE))


class Gate:
    """A work function that records its batches and holds the first one until released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.threads: set[str] = set()

    def __call__(self, items: Sequence[int]) -> list[int | Exception]:
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(items))
        self.started.set()
        if not self.release.wait(DEADLINE):
            raise AssertionError("never released")
        return [item * 10 if item >= 0 else ValueError(f"bad {item}") for item in items]


async def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.001)


def test_what_is_submitted_while_a_batch_runs_is_the_next_batch() -> None:
    gate = Gate()
    batcher: Batcher[int, int] = Batcher("test-batch", gate)

    async def test() -> None:
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.to_thread(gate.started.wait, DEADLINE)
        rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 6)]
        await asyncio.sleep(0.05)  # all five are queued behind the running batch
        gate.release.set()
        assert await first == 0
        assert await asyncio.gather(*rest) == [10, 20, 30, 40, 50]

    run(test)
    assert gate.batches == [[0], [1, 2, 3, 4, 5]]
    assert gate.threads == {"test-batch"}


def test_an_item_that_fails_fails_its_caller_only() -> None:
    gate = Gate()
    gate.release.set()
    batcher: Batcher[int, int] = Batcher("test-batch", gate)

    async def test() -> None:
        results = await asyncio.gather(
            batcher.submit(1), batcher.submit(-1), batcher.submit(2), return_exceptions=True
        )
        assert results[0] == 10
        assert results[2] == 20
        assert isinstance(results[1], ValueError)

    run(test)


def test_work_that_raises_fails_its_whole_batch_and_the_thread_goes_on() -> None:
    calls: list[Sequence[int]] = []

    def work(items: Sequence[int]) -> list[int | Exception]:
        calls.append(items)
        if len(calls) == 1:
            raise OSError("the disk went away")
        return list(items)

    batcher: Batcher[int, int] = Batcher("test-batch", work)

    async def test() -> None:
        with pytest.raises(OSError, match="the disk went away"):
            await batcher.submit(1)
        assert await batcher.submit(2) == 2

    run(test)


def test_a_caller_cancelled_before_its_batch_is_dropped_and_the_others_are_not_disturbed() -> None:
    gate = Gate()
    batcher: Batcher[int, int] = Batcher("test-batch", gate)

    async def test() -> None:
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.to_thread(gate.started.wait, DEADLINE)
        second = asyncio.create_task(batcher.submit(2))
        third = asyncio.create_task(batcher.submit(3))
        await asyncio.sleep(0.01)
        second.cancel()
        await asyncio.sleep(0.01)
        gate.release.set()
        assert await first == 10
        assert await third == 30
        with pytest.raises(asyncio.CancelledError):
            await second

    run(test)
    assert gate.batches == [[1], [3]]


def test_no_thread_for_a_batch_fails_the_caller_and_its_item_is_never_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = Gate()
    gate.release.set()
    batcher: Batcher[int, int] = Batcher("test-batch", gate)
    real_start = threading.Thread.start

    def no_thread(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    async def test() -> None:
        monkeypatch.setattr(threading.Thread, "start", no_thread)
        with pytest.raises(RuntimeError, match="can't start new thread"):
            await batcher.submit(1)
        monkeypatch.setattr(threading.Thread, "start", real_start)
        assert await batcher.submit(2) == 20

    run(test)
    assert gate.batches == [[2]]


def test_an_idle_thread_ends_and_the_next_submit_starts_another() -> None:
    batcher: Batcher[int, int] = Batcher("test-idle", list, idle_seconds=0.02)

    def alive() -> int:
        return sum(t.name == "test-idle" for t in threading.enumerate())

    async def test() -> None:
        assert await batcher.submit(1) == 1
        await wait_for(lambda: alive() == 0)
        assert await batcher.submit(2) == 2

    run(test)


def test_callers_on_two_event_loops_each_get_their_own_results() -> None:
    batcher: Batcher[int, int] = Batcher("test-loops", lambda items: [i + 1 for i in items])
    results: list[int] = []

    def one_loop(n: int) -> None:
        results.append(asyncio.run(asyncio.wait_for(batcher.submit(n), DEADLINE)))

    threads = [threading.Thread(target=one_loop, args=(n,)) for n in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert sorted(results) == [1, 2, 3, 4, 5]
