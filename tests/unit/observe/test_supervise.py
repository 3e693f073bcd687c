"""The supervision helper: a failing task is logged (one JSON line), backed off and run again;
it ends when its body returns or when it is told to stop, and cancellation is not a failure."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from inbound.observe.supervise import Backoff, supervise, supervise_thread


def failures(
    caplog: pytest.LogCaptureFixture, event: str = "task.failed"
) -> list[dict[str, object]]:
    return [
        dict(getattr(r, "fields", {})) for r in caplog.records if getattr(r, "event", None) == event
    ]


def test_backoff_doubles_up_to_its_cap_and_a_success_starts_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="inbound")
    backoff = Backoff("t", first=1.0, cap=5.0)
    delays = [backoff.failed(OSError(24, "Too many open files")) for _ in range(5)]
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.succeeded()
    assert backoff.failed(ValueError()) == 1.0
    logged = failures(caplog)
    assert logged[0] == {
        "task": "t",
        "error_type": "OSError",
        "errno": 24,
        "where": [],  # never raised: no frames
        "failures": 1,
        "retry_in": 1.0,
    }
    assert [f["failures"] for f in logged] == [1, 2, 3, 4, 5, 1]
    assert failures(caplog, "task.recovered") == [{"task": "t", "failures": 5}]


def test_a_failing_body_is_run_again_until_it_returns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="inbound")
    runs: list[int] = []

    async def body() -> None:
        runs.append(len(runs))
        if len(runs) < 4:
            raise OSError(24, "Too many open files")

    async def main() -> None:
        await supervise("loop", body, stop=asyncio.Event(), backoff=Backoff("loop", first=0.001))

    asyncio.run(asyncio.wait_for(main(), 10))
    assert runs == [0, 1, 2, 3]
    assert [f["failures"] for f in failures(caplog)] == [1, 2, 3]
    assert all(f["task"] == "loop" and f["error_type"] == "OSError" for f in failures(caplog))


def test_stop_ends_the_wait_between_two_runs() -> None:
    runs = 0

    async def body() -> None:
        nonlocal runs
        runs += 1
        raise RuntimeError("a bug")

    async def main() -> float:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        started = loop.time()
        task = asyncio.create_task(
            supervise("loop", body, stop=stop, backoff=Backoff("loop", first=60))
        )
        await asyncio.sleep(0.05)
        stop.set()
        await task
        return loop.time() - started

    took = asyncio.run(asyncio.wait_for(main(), 10))
    assert runs == 1
    assert took < 5, "not the 60 s backoff"


def test_cancellation_is_not_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="inbound")

    async def body() -> None:
        await asyncio.sleep(60)

    async def main() -> None:
        task = asyncio.create_task(supervise("loop", body, stop=asyncio.Event()))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(main(), 10))
    assert failures(caplog) == []


def test_a_thread_target_survives_its_exceptions(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="inbound")
    runs: list[str] = []

    def body() -> None:
        runs.append(threading.current_thread().name)
        if len(runs) < 3:
            raise MemoryError

    thread = threading.Thread(
        target=supervise_thread,
        args=("worker", body),
        kwargs={"backoff": Backoff("worker", first=0.001)},
        name="supervised",
    )
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert runs == ["supervised"] * 3, "run again in the same thread"
    assert [f["error_type"] for f in failures(caplog)] == ["MemoryError", "MemoryError"]
