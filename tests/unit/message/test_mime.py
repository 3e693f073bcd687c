"""The streaming attachment walk: the stdlib's parts, bounded memory, limits said, a stop obeyed."""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import inbound.message.walk
from inbound.core.message import Attachment, MimeLimits
from inbound.message.headers import ReceivedFacts, prepend_headers
from inbound.message.mime import WalkCancelled, attachment_of, walk_mime
from inbound.message.parse import parse_message
from inbound.message.read import read_facts, read_with_head
from inbound.message.source import FileSource
from tests.mime_samples import many_parts, nested

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
CORPUS = sorted((ROOT / "fixtures").rglob("*.eml"))
EXE = Attachment("x.exe", "application/octet-stream")


def stdlib_attachments(raw: bytes) -> list[Attachment]:
    """What the whole-message stdlib parse finds, walked without limits: the reference."""

    def parts(part: Message) -> Iterator[Message]:
        yield part
        payload = part.get_payload()
        if isinstance(payload, list):  # compat32: the parts of a multipart or message/*
            for child in payload:
                assert isinstance(child, Message)
                yield from parts(child)

    root = BytesParser(policy=compat32).parsebytes(raw)
    found = (attachment_of(p) for p in parts(root) if not p.is_multipart())
    return [a for a in found if a is not None]


def walked(raw: bytes) -> list[Attachment]:
    return walk_mime(io.BytesIO(raw), MimeLimits(10_000, 100)).attachments


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_corpus_parts_are_the_stdlib_parts(path: Path) -> None:
    raw = path.read_bytes()
    assert walked(raw) == stdlib_attachments(raw)


PIECES = [
    b"\r\n", b"\n", b"\r", b"--", b"b", b"x", b" ", b"\r\n\r\n",
    b"Content-Type: multipart/mixed; boundary=b\r\n", b'Content-Type: multipart/mixed; boundary="b--"\r\n',
    b"Content-Type: multipart/mixed; boundary=c\r\n", b"Content-Type: multipart/digest; boundary=b\r\n",
    b"Content-Type: message/rfc822\r\n", b"Content-Type: message/delivery-status\r\n",
    b"Content-Disposition: attachment; filename=x.exe\r\n",
    b"--b\r\n", b"--b--\r\n", b"--b \r\n", b"--b--", b"--b\r", b"--c\r\n", b"--c--\r\n",
]  # fmt: skip


@settings(max_examples=1500, deadline=None)
@given(pieces=st.lists(st.sampled_from(PIECES), max_size=50), chunk=st.sampled_from([1, 3, 65536]))
def test_hostile_structures_give_the_stdlib_parts_whatever_the_chunk(
    pieces: list[bytes], chunk: int
) -> None:
    raw = b"".join(pieces)
    original = inbound.message.walk.CHUNK
    inbound.message.walk.CHUNK = chunk  # lines and delimiters cut anywhere between two reads
    try:
        assert walked(raw) == stdlib_attachments(raw)
    finally:
        inbound.message.walk.CHUNK = original


@pytest.mark.parametrize(
    ("count", "limit"), [(1000, None), (1001, "more than 1000 MIME parts")], ids=["at", "beyond"]
)
def test_max_parts_both_ends(count: int, limit: str | None) -> None:
    facts = parse_message(many_parts(count))
    assert (EXE in facts.attachments) is (limit is None)
    assert facts.mime_limit == limit
    assert facts.subject == "parts"


@pytest.mark.parametrize(
    ("depth", "limit"),
    [(50, None), (51, "MIME parts nested more than 50 levels deep")],
    ids=["at", "beyond"],
)
def test_max_depth_both_ends(depth: int, limit: str | None) -> None:
    facts = parse_message(nested(depth))
    assert facts.attachments == ((EXE,) if limit is None else ())
    assert facts.mime_limit == limit


def test_limits_are_settable() -> None:
    assert parse_message(many_parts(20), MimeLimits(max_parts=19)).mime_limit is not None
    assert parse_message(nested(5), MimeLimits(max_depth=4)).mime_limit is not None
    assert parse_message(nested(5), MimeLimits(max_depth=5)).mime_limit is None


def test_an_oversized_part_header_block_stops_the_walk() -> None:
    filler = b"X-Filler: y\r\n" * 90_000  # 1.17 MB before the Content-Disposition
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n" + filler
        + b"Content-Disposition: attachment; filename=x.exe\r\n\r\nMZ\r\n--b--\r\n"
    )  # fmt: skip
    assert parse_message(raw).mime_limit == "a MIME header block over 1048576 bytes"


def big_message(tmp_path: Path, megabytes: int) -> Path:
    line = b"QUJD" * 19 + b"\r\n"
    body = line * (megabytes * 1024 * 1024 // len(line))
    path = tmp_path / "big.eml"
    path.write_bytes(
        b"Subject: big\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        b"Content-Disposition: attachment; filename=x.exe\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + body + b"\r\n--b--\r\n"
    )
    return path


def test_memory_is_a_chunk_and_a_line_not_the_message(tmp_path: Path) -> None:
    path = big_message(tmp_path, 8)
    tracemalloc.start()
    try:
        facts = read_facts(FileSource(path), "everything")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert facts.attachments == (EXE,)
    assert peak < 1024 * 1024, f"peak {peak} bytes for an 8 MB message"


def test_a_stop_ends_the_walk_at_the_next_chunk(tmp_path: Path) -> None:
    path = big_message(tmp_path, 4)
    reads = 0

    def stop() -> bool:
        nonlocal reads
        reads += 1
        return reads > 3

    with pytest.raises(WalkCancelled):
        read_facts(FileSource(path), "everything", stop=stop)
    assert reads == 4


def test_read_with_head_equals_prepending_to_the_whole_message(tmp_path: Path) -> None:
    received = ReceivedFacts("id", "mx.test", "a@b.example", ("c@d.example",), "helo",
                             "192.0.2.1", None, True, datetime(2024, 5, 1, tzinfo=UTC))  # fmt: skip
    extra = [
        b"X-SES-Spam-Verdict: PASS\r\nSubject: forged\r\n\r\nbody",
        b"Authentication-Results: mx.test; spf=pass\r\n\r\n",
        b"no header block at all",
        b"A: b\n\nLF only\n",
        b"",
    ]
    for index, raw in enumerate([p.read_bytes() for p in CORPUS] + extra):
        path = tmp_path / f"{index}.eml"
        path.write_bytes(raw)
        got = read_with_head(FileSource(path), lambda block: prepend_headers(block, received))
        assert got == prepend_headers(raw, received), path
