"""A message file as `inbound serve` would have received it, for `inbound evaluate` and `test`.

The file's bytes go through the receiver's own DATA reader (`inbound.receive.data`), fed as the
SMTP DATA stream would carry them, so the offline commands refuse what serve refuses: a bare
CR or LF (550 5.5.2), a line over the line length (500 5.5.2), a header block or message over
the size limits (552 5.3.4). The MIME limits are the rules' own and already match.

Line endings: an .eml on disk usually ends its lines in LF alone. A file that has no CR at all
is sent as a mail client would send it (smtplib, Thunderbird): every LF becomes CRLF. A file
with any CR keeps its bytes as they are, so CRLF files pass and a file that mixes line endings,
or has a bare CR, is refused as the receiver refuses it on the wire.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

from inbound.core.errors import read_user_file
from inbound.core.message import MessageFacts
from inbound.core.plan import Plan
from inbound.core.reply import SmtpReply
from inbound.message.read import read_facts
from inbound.message.source import BytesSource
from inbound.receive.data import DataOutcome, receive_data
from inbound.receive.limits import ReceiverLimits

STDIN = Path("-")


@dataclass(frozen=True)
class ReceivedMessage:
    """What the receiver would keep of a file, and its reply to DATA if it would refuse it."""

    data: bytes  # as stored: CRLF line endings, dots unstuffed
    facts: MessageFacts
    refusal: SmtpReply | None = None
    reason: str | None = None  # the refusal in words, for the trace


class _Collect:
    """The receiver's `MessageWriter`, keeping what it is given in memory."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def abort(self) -> None:
        self.chunks.clear()


def read_bytes(path: Path) -> bytes:
    """The bytes of `path`, or of standard input for `-`; unreadable is an `InputError`."""
    if path == STDIN:
        return sys.stdin.buffer.read()
    return read_user_file(path)


def as_sent(data: bytes) -> bytes:
    """`data` as the DATA stream carries it: LF-only files in CRLF, a final line ending, dots
    doubled at the start of a line (RFC 5321 §4.5.2), and the end-of-data line."""
    if b"\r" not in data:
        data = data.replace(b"\n", b"\r\n")
    if data and not data.endswith(b"\n"):
        data += b"\r\n"
    lines = data.splitlines(keepends=True)
    return b"".join(b"." + line if line.startswith(b".") else line for line in lines) + b".\r\n"


def receive_file(path: Path, limits: ReceiverLimits) -> ReceivedMessage:
    """Read `path` (or stdin for `-`) through the receiver's DATA checks, then its facts."""
    original = read_bytes(path)
    collect = _Collect()

    async def feed() -> DataOutcome:
        # The stream limit the SMTP session uses (receive/smtp.py): room for a dot and CRLF.
        reader = asyncio.StreamReader(limit=max(limits.max_line_length + 1, 1001))
        reader.feed_data(as_sent(original))
        reader.feed_eof()
        result = await receive_data(reader, collect, limits, keep_alive=lambda: None)
        assert result is not None
        return result.outcome

    outcome = asyncio.run(feed())
    kept = b"".join(collect.chunks) if outcome is DataOutcome.COMPLETE else original
    facts = read_facts(BytesSource(kept), "everything")
    if outcome.refusal is None:
        return ReceivedMessage(kept, facts)
    return ReceivedMessage(
        kept, facts, outcome.refusal, f"DATA refused ({outcome.value}), as inbound serve refuses it"
    )


def refuse_as_serve(plan: Plan, message: ReceivedMessage) -> Plan:
    """The plan when DATA is refused before any rule runs, as in the receiver: the recipients'
    answers stand, DATA gets the refusal, no rule applies. Unchanged if nothing is refused or
    no recipient was accepted (DATA is then never sent)."""
    if message.refusal is None or plan.data_reply is None:
        return plan
    return Plan(
        message_id=plan.message_id,
        connection=plan.connection,
        recipients=plan.recipients,
        data_reply=message.refusal,
        verdicts=plan.verdicts,
        notes=(*plan.notes, str(message.reason)),
        refused=message.reason,
    )
