"""Lambda functions for `inbound serve --lambda NAME=tests.integration.flaky_functions:FUNC`.

They run inside the server process (a child of the test), so they keep their memory on disk:
every call appends a line to `$INBOUND_TEST_LAMBDA_DIR/FUNC-MESSAGEID.calls`, and the test reads
the count back with `calls()`. A flag file `$INBOUND_TEST_LAMBDA_DIR/succeed` turns
`fail_until_flag` from failing to succeeding while the server runs, and ends the wait of
`wait_for_flag` (an action in progress for as long as the test wants).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

ENV = "INBOUND_TEST_LAMBDA_DIR"
SUCCEED_FLAG = "succeed"
FAILURES = 2  # fail_twice raises on this many calls per message, then succeeds


class FlakyFunctionError(RuntimeError):
    """What a test function raises when it is told to fail."""


def _directory() -> Path:
    value = os.environ.get(ENV)
    if not value:
        raise FlakyFunctionError(f"{ENV} is not set")
    return Path(value)


def _message_id(event: dict[str, Any]) -> str:
    return str(event["Records"][0]["ses"]["mail"]["messageId"])


def _record(function: str, event: dict[str, Any]) -> int:
    """Count this call on disk; return how many calls this message has had, this one included."""
    path = _directory() / f"{function}-{_message_id(event)}.calls"
    with path.open("a") as f:
        f.write("call\n")
        f.flush()
        os.fsync(f.fileno())
    return len(path.read_text().splitlines())


def calls(directory: Path, function: str, message_id: str) -> int:
    """How many times `function` was called for `message_id` (for the test side)."""
    path = directory / f"{function}-{message_id}.calls"
    return len(path.read_text().splitlines()) if path.exists() else 0


def fail_twice(event: dict[str, Any], context: object) -> dict[str, str]:
    """Raise for the first FAILURES calls of each message, then continue."""
    count = _record("fail_twice", event)
    if count <= FAILURES:
        raise FlakyFunctionError(f"planned failure {count} of {FAILURES}")
    return {"disposition": "CONTINUE"}


def fail_until_flag(event: dict[str, Any], context: object) -> dict[str, str]:
    """Raise on every call until the flag file exists; then continue."""
    _record("fail_until_flag", event)
    if (_directory() / SUCCEED_FLAG).exists():
        return {"disposition": "CONTINUE"}
    raise FlakyFunctionError("planned failure: no flag file yet")


def stop_rule_set(event: dict[str, Any], context: object) -> dict[str, str]:
    """A request_response function that ends evaluation of the whole rule set."""
    _record("stop_rule_set", event)
    return {"disposition": "STOP_RULE_SET"}


def wait_for_flag(event: dict[str, Any], context: object) -> dict[str, str]:
    """Return once the flag file exists (at most 30 s): an attempt the test holds open."""
    _record("wait_for_flag", event)
    deadline = time.monotonic() + 30
    while not (_directory() / SUCCEED_FLAG).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return {"disposition": "CONTINUE"}


def count_and_continue(event: dict[str, Any], context: object) -> dict[str, str]:
    """Count the call and continue: an action whose repeats a test can see."""
    _record("count_and_continue", event)
    return {"disposition": "CONTINUE"}
