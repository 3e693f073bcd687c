"""What the SMTP session asks of the rest of inbound: a policy for decisions, a writer for DATA."""

from __future__ import annotations

from typing import Protocol, TypeVar

from inbound.core.envelope import Connection
from inbound.core.envelope import Envelope as SmtpEnvelope
from inbound.core.reply import SmtpReply


class MessageWriter(Protocol):
    """Where DATA goes while it arrives (the spool's writer)."""

    def write(self, chunk: bytes) -> None: ...

    def abort(self) -> None: ...


W = TypeVar("W", bound=MessageWriter)


class SessionPolicy(Protocol[W]):
    """The decisions the SMTP session asks for; the receiver takes them as they come."""

    def connect(self, connection: Connection) -> SmtpReply | None:
        """None to greet the client, or the reply that refuses it."""

    def recipient(self, address: str, connection: Connection, sender: str) -> SmtpReply:
        """The reply to RCPT TO for one address, from `sender` (empty: the null sender)."""

    def postmaster(self) -> str:
        """The address `RCPT TO:<Postmaster>` (no domain, RFC 5321 §4.5.1) stands for."""

    async def open_message(self) -> tuple[str, W]:
        """A new message ID and the writer its DATA streams into."""

    async def end_of_data(
        self,
        message_id: str,
        writer: W,
        connection: Connection,
        envelope: SmtpEnvelope,
        size: int,
    ) -> SmtpReply:
        """Decide, and store or discard the message; the reply to DATA."""

    def refused(
        self,
        message_id: str,
        connection: Connection,
        envelope: SmtpEnvelope,
        reply: SmtpReply,
        *,
        reason: str,
        error: str | None = None,
    ) -> None:
        """The session refused a message it read to its end (`reason`: bare CR/LF, a limit, a
        failed write, named by `error`'s type): told so that it is logged and counted."""
