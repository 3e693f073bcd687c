"""The spool port: what the stages may know of a stored message and of the spool. No I/O.

A `MessageSource` is one message's bytes however they are kept (a spool entry, a segment of a
larger file, memory): the scanners, fact reading and dispatch read a message only through one.
A `SpoolPort` is what the receiver, the dispatcher and `inbound spool` ask of a spool; nothing
outside `inbound.spool` knows how a spool lays its messages out. The spool's records (its meta
and dispatch state) are type parameters, so this module depends on no stage.

Reads raise `OSError` when the bytes are gone or unreadable (a stream's own contract); the
spool's operations raise the `SpoolError` family below, never `OSError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, BinaryIO, Protocol, TypeVar

from inbound.core.errors import InboundError
from inbound.core.steps import StepRecord

# The longest header block `MessageSource.head` reads (the session refuses longer ones).
MAX_HEAD_BYTES = 1024 * 1024

Meta = TypeVar("Meta")
State = TypeVar("State")
Meta_contra = TypeVar("Meta_contra", contravariant=True)


class SpoolError(InboundError):
    """The spool could not do what was asked (or found an entry it did not write)."""


class MessageNotFound(SpoolError):  # noqa: N818 - the name the other stages catch
    """No message with this ID where it was looked for (or the ID is not a message ID)."""


class RulesNotFoundError(SpoolError):
    """No saved rule set with this digest."""


class SpoolWriteError(SpoolError):
    """A message or its state could not be made durable; the receiver answers 451 4.3.0."""


class MessageSource(Protocol):
    """One message's bytes exactly as received (after dot-unstuffing)."""

    @property
    def size(self) -> int:
        """Its length in bytes."""
        ...

    def open(self) -> BinaryIO:
        """A new binary stream at its first byte; the caller closes it (`with source.open()`)."""
        ...

    def head(self, limit: int = MAX_HEAD_BYTES) -> bytes:
        """The header block up to and with the empty line that ends it; the first `limit`
        bytes (or the whole message) when no empty line comes within them."""
        ...

    def read_all(self) -> bytes:
        """Every byte, in one buffer (for the actions that send the message)."""
        ...


class MessageWriter(Protocol[Meta_contra]):
    """A message being received: streamed in, then committed (durable) or aborted."""

    @property
    def message_id(self) -> str: ...

    @property
    def size(self) -> int: ...

    def write(self, chunk: bytes) -> None:
        """Append bytes; `SpoolWriteError` (the writer is then aborted) if they cannot be."""
        ...

    def source(self) -> MessageSource:
        """The bytes written so far, readable before the commit (the scanners, the facts)."""
        ...

    def commit(self, meta: Meta_contra) -> None:
        """Make the message durable and queued; only then may the receiver answer 250."""
        ...

    def abort(self) -> None:
        """Forget the message, best effort; never raises."""
        ...


Writer = TypeVar("Writer", bound=MessageWriter[Any])


class Committer(Protocol[Writer, Meta_contra]):
    """Where the SMTP sessions put messages: a writer each, then commits (in batches, say)."""

    def open_writer(self, message_id: str) -> Writer:
        """A writer for a new message (`SpoolWriteError` if it cannot be made)."""
        ...

    async def commit(self, writer: Writer, meta: Meta_contra) -> None:
        """Return once the message is durable and queued. The writer is the committer's from
        the call on: a caller cancelled before its commit starts has its writer aborted."""
        ...


class SpoolPort(Protocol[Meta, State]):
    """A durable spool of messages, each queued (waiting for its actions) or dead-lettered.

    Every method may block on storage: call it from a thread in a running event loop."""

    def open_writer(self, message_id: str) -> MessageWriter[Meta]: ...

    def recover(self) -> int:
        """Forget what was never acknowledged; once, at start-up. How many were forgotten."""
        ...

    def queued(self) -> list[str]:
        """IDs of the queued messages, oldest first."""
        ...

    def dead(self) -> list[str]:
        """IDs of the dead-lettered messages, oldest first."""
        ...

    def depth(self) -> tuple[int, int]:
        """(queued, dead)."""
        ...

    def source(self, message_id: str) -> MessageSource:
        """A queued or dead-lettered message's bytes (`MessageNotFound` if it has none)."""
        ...

    def meta(self, message_id: str) -> Meta: ...

    def state(self, message_id: str) -> State: ...

    def save_state(self, message_id: str, state: State) -> None: ...

    def record_steps(self, steps: Sequence[tuple[str, str, StepRecord]]) -> None:
        """Make succeeded steps (message ID, step key, record) durable together, so a retry
        never repeats them; `state` includes them from then on. `SpoolWriteError`: none is."""
        ...

    def finish(self, message_id: str) -> None:
        """Delivered (or purged): the message is gone."""
        ...

    def dead_letter(self, message_id: str, reason: str) -> None: ...

    def retry(self, message_id: str, *, now: datetime | None = None) -> None:
        """Retry now: a dead letter is queued again, a deferred message is due at once."""
        ...

    def save_rules(self, text: str) -> str:
        """Keep a rule-set text for the messages received under it; its SHA-256 digest."""
        ...

    def load_rules(self, digest: str) -> str: ...
