"""A message held in memory drives fact reading and the scanners' reading: the stages use the
`MessageSource` port and nothing else (no path, no spool), so another spool format can feed them.

`MemorySource` is this test's own implementation of the port, neither a file nor the package's
`BytesSource`: whatever the stages need beyond the protocol would fail here.
"""

from __future__ import annotations

import asyncio
import io
from ipaddress import ip_address
from pathlib import Path
from typing import BinaryIO

import pytest

from inbound.core.envelope import Connection, Envelope
from inbound.core.ports import MAX_HEAD_BYTES, MessageSource
from inbound.core.verdicts import Verdict
from inbound.message.headers import DkimResult
from inbound.message.read import read_facts, read_with_head
from inbound.message.source import BytesSource, FileSource
from inbound.scan.auth import authenticate
from inbound.scan.dns import ZoneResolver
from inbound.scan.run import Scanners

ROOT = Path(__file__).resolve().parents[3]
CORPUS = sorted((ROOT / "fixtures" / "corpus" / "eml").rglob("*.eml"))
REAL = ROOT / "fixtures" / "corpus" / "eml" / "real"
ZONES = sorted((ROOT / "fixtures" / "dns").glob("*.zone"))
SIGNED = "dkimpy__rfc6376_signed.eml"
FOOTBALL = (
    DkimResult("pass", "football.example.com", "brisbane"),
    DkimResult("pass", "football.example.com", "test"),
)


class MemorySource:
    """The port over bytes, counting how the message is read."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.opened = 0
        self.heads = 0
        self.read_whole = 0

    @property
    def size(self) -> int:
        return len(self.data)

    def open(self) -> BinaryIO:
        self.opened += 1
        return io.BytesIO(self.data)

    def head(self, limit: int = MAX_HEAD_BYTES) -> bytes:
        self.heads += 1
        end = self.data.find(b"\r\n\r\n", 0, limit)
        return self.data[: end + 4] if end >= 0 else self.data[:limit]

    def read_all(self) -> bytes:
        self.read_whole += 1
        return self.data


def authenticate_from(source: MessageSource) -> tuple[Verdict, tuple[DkimResult, ...]]:
    outcome = asyncio.run(
        authenticate(
            source,
            client_ip="192.0.2.10",
            helo="mx.sender.example",
            mail_from="bounce@spf-pass.example",
            resolver=ZoneResolver.from_files(ZONES, timeout=1.0),
            timeout=10.0,
        )
    )
    return outcome.dkim, outcome.details.dkim


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_facts_read_from_memory_are_the_facts_of_the_file(path: Path) -> None:
    raw = path.read_bytes()
    for need in ("nothing", "headers", "everything"):
        source = MemorySource(raw)
        assert read_facts(source, need) == read_facts(FileSource(path), need), need
        assert source.opened == (0 if need == "nothing" else 1)


def test_the_bytes_an_action_sends_come_from_the_source() -> None:
    raw = (REAL / SIGNED).read_bytes()
    sent = read_with_head(MemorySource(raw), lambda block: b"X-Trace: 1\r\n" + block)
    assert sent == b"X-Trace: 1\r\n" + raw


def test_dkim_is_verified_from_memory() -> None:
    raw = (REAL / SIGNED).read_bytes()
    source = MemorySource(raw)
    assert authenticate_from(source) == (Verdict.PASS, FOOTBALL)
    assert authenticate_from(FileSource(REAL / SIGNED)) == (Verdict.PASS, FOOTBALL)
    assert source.read_whole == 1  # a small message: read whole, at once


def test_a_large_unsigned_message_is_read_from_the_source_header_only() -> None:
    raw = b"From: a@sender.example\r\nSubject: big\r\n\r\n" + b"x" * 70 + b"\r\n" * 5000
    raw += b"y" * (300 * 1024)
    source = MemorySource(raw)
    verdict, results = authenticate_from(source)
    assert (verdict, results) == (Verdict.GRAY, ())  # not signed
    assert (source.heads, source.opened, source.read_whole) == (1, 0, 0)


def test_the_scanners_take_the_message_from_the_source() -> None:
    raw = (REAL / SIGNED).read_bytes()
    scanners = Scanners(resolver=ZoneResolver.from_files(ZONES, timeout=1.0))
    outcome = asyncio.run(
        scanners.scan(
            MemorySource(raw),
            scanning=True,
            connection=Connection(ip_address("192.0.2.10"), "mx.sender.example", False),
            envelope=Envelope("bounce@spf-pass.example", ("joe@football.example.com",)),
        )
    )
    assert outcome.verdicts.dkim is Verdict.PASS
    assert outcome.auth.dkim == FOOTBALL
    # No clamd or spamd configured: the verdicts say so, from the same source.
    assert outcome.verdicts.virus is Verdict.PROCESSING_FAILED
    assert outcome.verdicts.spam is Verdict.PROCESSING_FAILED


@pytest.mark.parametrize(
    ("raw", "limit", "head"),
    [
        (b"A: b\r\n\r\nbody", MAX_HEAD_BYTES, b"A: b\r\n\r\n"),
        (b"A: b\n\nbody", MAX_HEAD_BYTES, b"A: b\n\n"),
        (b"A: b\r\nno body", MAX_HEAD_BYTES, b"A: b\r\nno body"),
        (b"A: b\r\nC: d\r\n\r\nbody", 8, b"A: b\r\nC:"),
        (b"", MAX_HEAD_BYTES, b""),
    ],
    ids=["crlf", "lf", "no-blank-line", "beyond-the-limit", "empty"],
)
def test_head_is_the_header_block(tmp_path: Path, raw: bytes, limit: int, head: bytes) -> None:
    path = tmp_path / "m.eml"
    path.write_bytes(raw)
    for source in (BytesSource(raw), FileSource(path)):
        assert source.head(limit) == head, source
        assert source.size == len(raw)
        assert source.read_all() == raw
        with source.open() as stream:
            assert stream.read() == raw
