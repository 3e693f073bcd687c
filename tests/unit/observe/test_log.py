"""After `configure()`, nothing reaches stderr but JSON lines: asyncio's own errors, other
libraries' records, warnings, and exceptions no one caught (a task, a thread, the process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from inbound.observe import log as log_module
from tests.conftest import ROOT

PROGRAM = textwrap.dedent(
    """
    import asyncio, logging, threading, warnings
    from inbound.observe.log import capture_asyncio, configure

    configure()

    async def main():
        loop = asyncio.get_running_loop()
        capture_asyncio(loop)
        for _ in range(500):  # what asyncio does for each write to a lost connection
            logging.getLogger("asyncio").warning("socket.send() raised exception.")
        for _ in range(500):
            loop.call_exception_handler({
                "message": "socket.accept() out of system resource",
                "exception": OSError(24, "Too many open files: alice@example.com"),
            })

        async def fails():
            raise ValueError("alice@example.com")

        task = loop.create_task(fails())
        await asyncio.sleep(0)
        del task  # its exception never retrieved: reported when it is collected

    asyncio.run(main())
    thread = threading.Thread(target=lambda: 1 / 0, name="doomed")
    thread.start()
    thread.join()
    warnings.warn("deprecated")
    raise SystemError("the end, alice@example.com")
    """
)


def test_only_json_lines_reach_stderr_and_floods_are_counted() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert result.returncode == 1
    events = []
    for line in result.stderr.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"plain text on stderr: {line!r}") from None
    assert "alice@example.com" not in result.stderr, "exception text stays out"
    sends = [e for e in events if e["event"] == "library.logged" and e["logger"] == "asyncio"]
    assert len(sends) == 10
    assert sends[0]["message"] == "socket.send() raised exception."
    accepts = [e for e in events if e["event"] == "asyncio.error" and "accept" in e["message"]]
    assert len(accepts) == 10
    assert accepts[0]["errno"] == 24
    assert {e["key"]: e["suppressed"] for e in events if e["event"] == "log.suppressed"} == {
        "asyncio:socket.send() raised exception.": 490,
        "inbound.asyncio:socket.accept() out of system resource": 490,
    }
    never_retrieved = [
        e for e in events if e["event"] == "asyncio.error" and "never" in e["message"]
    ]
    assert never_retrieved[0]["error_type"] == "ValueError"
    thread = [e for e in events if e["event"] == "thread.failed"]
    assert thread == [{**thread[0], "thread": "doomed", "error_type": "ZeroDivisionError"}]
    # Where it failed (file:line function), to find the bug by, without the exception's text.
    assert thread[0]["where"][-1] == "<string>:26 <lambda>"
    assert never_retrieved[0]["where"][-1] == "<string>:19 fails"
    assert any(e["event"] == "library.logged" and e["logger"] == "py.warnings" for e in events)
    assert [e["error_type"] for e in events if e["event"] == "process.failed"] == ["SystemError"]


@settings(max_examples=2000, deadline=None)
@given(
    st.one_of(
        st.floats(min_value=0, max_value=4e9, allow_nan=False),
        st.integers(0, 4_000_000_000).map(lambda s: s + 0.9999995),
        st.integers(0, 4_000_000_000).map(lambda s: s + 0.0005),
    )
)
def test_the_timestamp_of_a_line_is_isoformat_to_the_millisecond(created: float) -> None:
    expected = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    assert log_module._timestamp(created) == expected
    assert log_module._timestamp(created) == expected  # the second's text, remembered
