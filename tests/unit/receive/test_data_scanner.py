"""The DATA scanner against a line-by-line reader of the same rules, on generated streams.

The reference below is the receiver's former DATA reader (StreamReader.readuntil, one line at a
time): whatever the bytes and however they are cut into chunks, the scanner must end DATA at the
same byte, reach the same outcome, count the same size and write the same message.
"""

from __future__ import annotations

import asyncio
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from inbound.receive.data import DataOutcome, DataResult, DataScanner
from inbound.receive.limits import ReceiverLimits

LIMITS = ReceiverLimits(max_line_length=40, max_message_size=600, max_header_size=60)
TOKENS = [b"\r\n", b"\n", b"\r", b".", b"..", b"a", b"bc", b"x" * 30, b"h: " + b"h" * 20 + b"\r\n"]
TOKENS += [b"\r\n.\r\n", b"\r\n\r\n"]


class Collect:
    def __init__(self, fail_after: int | None = None) -> None:
        self.chunks: list[bytes] = []
        self.fail_after = fail_after

    def write(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        if self.fail_after is not None and sum(map(len, self.chunks)) > self.fail_after:
            raise OSError(28, "No space left on device")

    def abort(self) -> None:
        pass


def reference(stream: bytes, limits: ReceiverLimits) -> tuple[DataResult | None, int, bytes]:
    """The former reader: (result, bytes of DATA read, what was written)."""
    collect = Collect()
    outcome, size, header_size, in_header = DataOutcome.COMPLETE, 0, 0, True

    def refuse(what: DataOutcome) -> None:
        nonlocal outcome
        if outcome is DataOutcome.COMPLETE:
            outcome = what

    async def run() -> tuple[DataResult | None, int]:
        nonlocal size, header_size, in_header
        reader = asyncio.StreamReader(limit=max(limits.max_line_length + 1, 1001))
        reader.feed_data(stream)
        reader.feed_eof()
        consumed, after_crlf, cr_pending = 0, True, False
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as exc:
                chunk = await reader.read(exc.consumed)
                consumed += len(chunk)
                refuse(DataOutcome.LINE_TOO_LONG)
                after_crlf, cr_pending = False, chunk.endswith(b"\r")
                continue
            except asyncio.IncompleteReadError:
                return None, consumed
            consumed += len(line)
            if line == b".\r\n" and after_crlf:
                return DataResult(outcome, size), consumed
            after_crlf = line.endswith(b"\r\n") or (cr_pending and line == b"\n")
            cr_pending = False
            if outcome is not DataOutcome.COMPLETE:
                continue
            if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
                refuse(DataOutcome.BARE_LINE_ENDING)
                continue
            if len(line) > limits.max_line_length + (line[:1] == b"."):
                refuse(DataOutcome.LINE_TOO_LONG)
                continue
            if line[:1] == b".":
                line = line[1:]
            size += len(line)
            if in_header:
                in_header = line != b"\r\n"
                header_size += len(line)
                if in_header and header_size > limits.max_header_size:
                    refuse(DataOutcome.HEADER_TOO_BIG)
                    continue
            if size > limits.max_message_size:
                refuse(DataOutcome.TOO_BIG)
                continue
            collect.write(line)

    result, consumed = asyncio.run(run())
    return result, consumed, b"".join(collect.chunks)


def scan(
    stream: bytes, cuts: list[int], limits: ReceiverLimits
) -> tuple[DataResult | None, int, bytes]:
    collect = Collect()
    scanner = DataScanner(collect, limits)
    bounds = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for start, end in itertools.pairwise(bounds):
        used = scanner.feed(stream[start:end])
        if used >= 0:
            return scanner.result(), start + used, b"".join(collect.chunks)
    return None, len(stream), b"".join(collect.chunks)


streams = st.lists(st.sampled_from(TOKENS), max_size=60).map(b"".join)


@settings(max_examples=600, deadline=None)
@given(streams, st.lists(st.integers(min_value=0, max_value=10_000), max_size=8))
def test_the_scanner_reads_as_a_line_reader(stream: bytes, cuts: list[int]) -> None:
    expected, expected_used, expected_written = reference(stream, LIMITS)
    got, used, written = scan(stream, cuts, LIMITS)
    if expected is None:
        assert got is None
        return
    assert got is not None
    assert (got.outcome, used) == (expected.outcome, expected_used)
    if expected.outcome is DataOutcome.COMPLETE:
        assert (got.size, written) == (expected.size, expected_written)


@settings(max_examples=200, deadline=None)
@given(streams, st.integers(min_value=1, max_value=7))
def test_byte_by_byte_is_the_same_as_at_once(stream: bytes, step: int) -> None:
    whole = scan(stream, [], LIMITS)
    bytewise = scan(stream, list(range(0, len(stream), step)), LIMITS)
    assert (whole[0], whole[1], whole[2]) == (bytewise[0], bytewise[1], bytewise[2])


def test_smuggling_sequences_are_data_and_refused() -> None:
    """SPEC section 7: only CRLF.CRLF ends DATA; `\\n.\\r\\n` and friends are refused data."""
    for end in (b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\r\n.\r", b"\r.\r\n"):
        stream = b"Subject: a\r\n\r\nbody" + end + b"MAIL FROM:<x@y>\r\n.\r\nNOOP\r\n"
        result, used, _ = scan(stream, [], ReceiverLimits())
        assert result is not None
        assert result.outcome is DataOutcome.BARE_LINE_ENDING
        assert stream[used:] == b"NOOP\r\n"


def test_a_failed_write_reads_on_to_the_end_of_data() -> None:
    collect = Collect(fail_after=10)
    scanner = DataScanner(collect, ReceiverLimits())
    assert scanner.feed(b"Subject: a\r\n\r\n" + b"line\r\n" * 100) == -1
    assert scanner.feed(b"MAIL FROM:<a@b>\r\n.\r\nQUIT\r\n") == len(b"MAIL FROM:<a@b>\r\n.\r\n")
    assert scanner.result().outcome is DataOutcome.FAILED
    assert isinstance(scanner.result().error, OSError)


def test_a_40_mb_message_is_never_held_whole() -> None:
    """Streaming: what the scanner keeps between chunks is at most one line."""
    collect = Collect()
    scanner = DataScanner(collect, ReceiverLimits())
    chunk = (b"x" * 76 + b"\r\n") * 800
    assert scanner.feed(b"Subject: big\r\n\r\n") == -1
    for _ in range(40 * 1024 * 1024 // len(chunk)):
        assert scanner.feed(chunk[:-7]) == -1
        assert len(scanner._pending) < 1000
        assert scanner.feed(chunk[-7:]) == -1
        collect.chunks.clear()
    assert scanner.feed(b".\r\n") == 3
    assert scanner.result().outcome is DataOutcome.COMPLETE


def test_a_header_block_over_the_limit_in_one_chunk_with_its_end() -> None:
    """The header's end and its excess in the same chunk: still refused."""
    stream = b"X-One: " + b"h" * 25 + b"\r\nX-Two: " + b"h" * 25 + b"\r\n\r\nbody\r\n.\r\n"
    expected = reference(stream, LIMITS)
    result, used, _ = scan(stream, [], LIMITS)
    assert result is not None
    assert expected[0] is not None
    assert result.outcome is expected[0].outcome is DataOutcome.HEADER_TOO_BIG
    assert used == len(stream)
