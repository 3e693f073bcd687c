"""The log's rate limiter: a burst per key and window, then a count of what was held back
written when the window ends; inbound's own events are never limited."""

from __future__ import annotations

import io
import json
import logging
import time

from inbound.observe.log import JsonFormatter
from inbound.observe.ratelimit import RateLimitedHandler, RateLimiter, rate_key


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_per_window_then_the_count_when_the_window_ends() -> None:
    clock = Clock()
    limiter = RateLimiter(burst=3, window=10.0, clock=clock)
    assert [limiter.admit("a") for _ in range(5)] == [True, True, True, False, False]
    assert limiter.admit("b"), "keys are limited apart"
    assert limiter.next_end() == 110.0
    clock.now = 109.9
    assert limiter.ended() == []
    clock.now = 110.0
    assert limiter.ended() == [("a", 2)]
    assert limiter.ended() == [], "reported once"
    assert limiter.admit("a"), "a new window"


def test_a_window_that_ends_with_the_next_line_is_reported_too() -> None:
    clock = Clock()
    limiter = RateLimiter(burst=1, window=10.0, clock=clock)
    assert limiter.admit("a")
    assert not limiter.admit("a")
    clock.now = 120.0
    assert limiter.admit("a")
    assert limiter.ended() == [("a", 1)]
    assert limiter.next_end() is None


def test_too_many_keys_share_one() -> None:
    limiter = RateLimiter(burst=1, window=10.0, max_keys=2, clock=Clock())
    assert limiter.admit("a")
    assert limiter.admit("b")
    assert limiter.admit("c"), "the first line of key 'other'"
    assert not limiter.admit("d")
    assert limiter.ended(everything=True) == [("other", 1)]


def test_only_foreign_and_marked_records_are_limited() -> None:
    def record(name: str, **extra: object) -> logging.LogRecord:
        r = logging.LogRecord(
            name, logging.ERROR, __file__, 1, "socket.send() raised %s.", ("x",), None
        )
        r.__dict__.update(extra)
        return r

    assert rate_key(record("inbound.dispatch", event="action.failed")) is None
    assert rate_key(record("asyncio")) == "asyncio:socket.send() raised %s."
    assert rate_key(
        record("inbound.asyncio", rate_key="socket.accept() out of system resource")
    ) == ("inbound.asyncio:socket.accept() out of system resource")


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_the_handler_drops_a_flood_and_writes_its_count() -> None:
    stream = io.StringIO()
    handler = RateLimitedHandler(stream, RateLimiter(burst=2, window=0.2))
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.flood")
    logger.handlers[:] = [handler]
    logger.propagate = False
    own = logging.getLogger("inbound.test.own")
    own.handlers[:] = [handler]
    own.propagate = False
    own.setLevel(logging.INFO)
    try:
        for _ in range(1000):
            logger.warning("socket.send() raised exception.")
        for i in range(5):
            own.info("message.spooled", extra={"event": "message.spooled", "fields": {"n": i}})
        deadline = time.monotonic() + 10
        while "log.suppressed" not in stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)  # the window ends; a thread writes its count
    finally:
        logger.handlers.clear()
        own.handlers.clear()
        handler.close()
    written = lines(stream)
    floods = [e for e in written if e["event"] == "library.logged"]
    assert len(floods) == 2
    assert floods[0]["logger"] == "test.flood"
    assert floods[0]["message"] == "socket.send() raised exception."
    assert [e["n"] for e in written if e["event"] == "message.spooled"] == [0, 1, 2, 3, 4]
    suppressed = [e for e in written if e["event"] == "log.suppressed"]
    assert suppressed == [
        {
            "ts": suppressed[0]["ts"],
            "level": "warning",
            "event": "log.suppressed",
            "key": "test.flood:socket.send() raised exception.",
            "suppressed": 998,
            "window_s": 0.2,
        }
    ]
