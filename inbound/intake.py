"""The decisions an SMTP session asks for, made with the rule book, and storage in the spool.

This is the `SessionPolicy` of the receiver: receipt filters at connect, recipient acceptance
at RCPT, and at the end of DATA the in-session bounce or the durable commit that earns the
250. It wires rules, spool and observability; the receiver never sees any of them. It sees the
spool through its port (`inbound.core.ports`) and reads a message only through its source.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Generic, TypeVar

from inbound.core import reply as replies
from inbound.core.clock import utc_now
from inbound.core.envelope import Connection, Envelope
from inbound.core.ids import MessageIdGenerator
from inbound.core.message import MessageFacts, MimeLimits
from inbound.core.ports import Committer, MessageSource, MessageWriter, SpoolError
from inbound.core.reply import SmtpReply
from inbound.message.mime import WalkCancelled
from inbound.message.read import Need, need_for, read_facts
from inbound.observe.log import emit, emit_fields
from inbound.observe.metrics import ReceiveMetrics
from inbound.rules.book import RuleBook
from inbound.rules.decide import check_srs
from inbound.rules.evaluate import (
    check_connection,
    check_recipient,
    evaluate,
    message_keys,
    results_unknown,
    scanning_enabled,
)
from inbound.scan.run import Scanners
from inbound.spool.retry import SpoolMeta
from inbound.srs import SrsKeys

log = logging.getLogger("inbound.intake")

# Messages read for their facts at once (each in a thread, a chunk and a header block of memory);
# the rest wait their turn, so a burst of big messages cannot take every core.
PARSES = 2

Writer = TypeVar("Writer", bound=MessageWriter[SpoolMeta])


class Intake(Generic[Writer]):
    def __init__(
        self,
        book: RuleBook,
        spool: Committer[Writer, SpoolMeta],
        scanners: Scanners,
        *,
        hostname: str,
        metrics: ReceiveMetrics,
        on_queued: Callable[[str], None],
        ids: MessageIdGenerator | None = None,
        clock: Callable[[], datetime] = utc_now,
        mime_limits: MimeLimits | None = None,
        parses: int = PARSES,
        srs_keys: SrsKeys | None = None,
    ) -> None:
        self.book = book
        self.spool = spool
        self.scanners = scanners
        self.hostname = hostname
        self.metrics = metrics
        self.on_queued = on_queued
        self.ids = ids or MessageIdGenerator()
        self.clock = clock
        self.mime_limits = mime_limits or MimeLimits()
        self.srs_keys = srs_keys
        self._parsing = asyncio.Semaphore(parses)
        self._stopping = threading.Event()

    def stop_parsing(self) -> None:
        """Shutdown: every read of a message ends at its next chunk (the session gets 421)."""
        self._stopping.set()

    def connect(self, connection: Connection) -> SmtpReply | None:
        decision = check_connection(self.book.current.compiled, connection)
        if decision.accepted:
            self.metrics.connections.labels(result="accepted").inc()
            return None
        self.metrics.connections.labels(result="refused").inc()
        client_ip = str(connection.client_ip)
        fields = {"client_ip": client_ip, "filter": decision.filter, **_via(connection)}
        emit_fields(log, "connection.refused", fields)
        return decision.reply

    def recipient(self, address: str, connection: Connection, sender: str) -> SmtpReply:
        rules = self.book.current.compiled
        decision = None
        if rules.srs_rule is not None:
            # A bounce to a forward's SRS address is relayed only if inbound signed it: the
            # hash and the age are checked here, with the keys and the clock.
            decision = check_srs(rules, address, self.srs_keys, self.clock())
        if decision is None:
            decision = check_recipient(rules, address, tls=connection.tls)
        if not decision.accepted:
            self.metrics.recipients_rejected.labels(reason=decision.reply.status).inc()
            # Addresses are the metadata an operator traces mail by (as Postfix's "reject:"
            # lines); a body or a subject never is.
            fields: dict[str, object] = {
                "recipient": address,
                "client_ip": str(connection.client_ip),
                **_via(connection),
                "helo": connection.helo,
                "sender": sender,
                "code": decision.reply.code,
                "status": decision.reply.status,
                "reason": decision.reason,
            }
            emit_fields(log, "recipient.rejected", fields)
        return decision.reply

    def refused(
        self,
        message_id: str,
        connection: Connection,
        envelope: Envelope,
        reply: SmtpReply,
        *,
        reason: str,
        error: str | None = None,
    ) -> None:
        """DATA refused by the session itself (bare CR/LF, a limit, a failed write): one line
        and one count, as for every other reply to DATA."""
        self.metrics.messages.labels(code=str(reply.code)).inc()
        fields: dict[str, object] = {"message_id": message_id, "reason": reason, "error": error}
        fields.update(_trace(connection, envelope, reply))
        level = logging.WARNING if error is None else logging.ERROR
        emit_fields(log, "message.refused", fields, level=level)

    def postmaster(self) -> str:
        # The first receiving domain of the rule set: a rule for postmaster@ it, or for the
        # domain, gets mail to a bare <Postmaster> (README, "Decisions in the session").
        return f"postmaster@{self.book.current.compiled.model.domains[0]}"

    async def open_message(self) -> tuple[str, Writer]:
        message_id = self.ids.next()
        # No I/O: a message is kept in memory until it outgrows the writer's buffer (then a
        # mkdir and an open, cheaper in place than the latency of a hop to a worker thread).
        return message_id, self.spool.open_writer(message_id)

    async def end_of_data(
        self,
        message_id: str,
        writer: Writer,
        connection: Connection,
        envelope: Envelope,
        size: int,
    ) -> SmtpReply:
        # What `message.received` says, message ID first; filled in as the decision goes.
        trace: dict[str, object] = {"message_id": message_id, "size": size, "tls": connection.tls}
        try:
            reply = await self._decide_and_store(
                message_id, writer, connection, envelope, size, trace=trace
            )
        except asyncio.CancelledError:
            # The client went away (or the drain timed out) before the reply: the trail says
            # so, since no reply will (a commit under way may still have queued it).
            writer.abort()
            emit_fields(
                log, "message.abandoned", {"message_id": message_id, **_who(connection, envelope)}
            )
            raise
        except SpoolError as exc:
            writer.abort()
            emit(
                log,
                "message.spool_failed",
                level=logging.ERROR,
                message_id=message_id,
                error=type(exc).__name__,
            )
            reply = replies.INTERNAL_ERROR
        except Exception as exc:
            writer.abort()
            # The session answers 451 4.3.0 (and logs where it failed): counted and traced here.
            self.metrics.messages.labels(code=str(replies.INTERNAL_ERROR.code)).inc()
            trace.update(_trace(connection, envelope, replies.INTERNAL_ERROR))
            trace["error"] = type(exc).__name__
            emit_fields(log, "message.received", trace, level=logging.ERROR)
            raise
        except BaseException:
            writer.abort()
            raise
        self.metrics.messages.labels(code=str(reply.code)).inc()
        trace.update(_trace(connection, envelope, reply))
        emit_fields(log, "message.received", trace)
        return reply

    async def _decide_and_store(
        self,
        message_id: str,
        writer: Writer,
        connection: Connection,
        envelope: Envelope,
        size: int,
        *,
        trace: dict[str, object],
    ) -> SmtpReply:
        """The reply to DATA; what `message.received` says of the message goes into `trace`."""
        snapshot = self.book.current
        rules = snapshot.compiled
        need = need_for(message_keys(rules, envelope.rcpt_tos))
        # The bytes in memory, or at most one write buffer left to flush: page cache, cheaper
        # here than in a thread.
        source = writer.source()
        scanned = await self.scanners.scan(
            source,
            scanning=scanning_enabled(rules, envelope.rcpt_tos),
            connection=connection,
            envelope=envelope,
        )
        if need == "nothing":
            facts = MessageFacts(size=size)
        else:
            try:
                facts = await self._read_facts(source, need)
            except WalkCancelled:
                writer.abort()
                return replies.SHUTTING_DOWN
        plan = evaluate(
            rules,
            message_id=message_id,
            connection=connection,
            envelope=envelope,
            message=facts,
            verdicts=scanned.verdicts,
            lambda_results=results_unknown,
        )
        trace.update(
            verdicts=plan.verdicts.as_json(),
            virus=scanned.virus_detail,
            spam=scanned.spam_detail,
        )
        if plan.data_reply is not None and not plan.data_reply.is_success:
            # A bounce before any storing action, or a MIME structure beyond the limits where a
            # rule needs every attachment: nothing is stored.
            writer.abort()
            rule, index = plan.session_bounce or (None, None)
            emit(
                log,
                "message.rejected",
                message_id=message_id,
                rule=rule,
                action=index,
                code=plan.data_reply.code,
                status=plan.data_reply.status,
                mime_limit=facts.mime_limit,
            )
            return plan.data_reply
        meta = SpoolMeta(
            message_id=message_id,
            envelope=envelope,
            connection=connection,
            received_at=self.clock(),
            rules_digest=snapshot.digest,
            hostname=self.hostname,
            verdicts=plan.verdicts,
            size=size,
            auth=scanned.auth,
            facts=None if need == "nothing" else facts,
        )
        await self.spool.commit(writer, meta)
        emit(log, "message.spooled", message_id=message_id, size=size)
        self.on_queued(message_id)
        return replies.queued(message_id)

    async def _read_facts(self, source: MessageSource, need: Need) -> MessageFacts:
        """One streaming read of the message, `parses` at a time; a cancelled session (the
        drain timeout, a dropped client) or a shutdown stops it at its next chunk, so no thread
        outlives the process's SIGTERM."""
        cancelled = threading.Event()

        def stop() -> bool:
            return cancelled.is_set() or self._stopping.is_set()

        async with self._parsing:
            try:
                return await asyncio.to_thread(
                    read_facts, source, need, self.mime_limits, stop=stop
                )
            except asyncio.CancelledError:
                cancelled.set()
                raise


def _who(connection: Connection, envelope: Envelope) -> dict[str, object]:
    """Who sent a message to whom: the fields every line about one message carries."""
    return {
        "client_ip": str(connection.client_ip),
        **_via(connection),
        "helo": connection.helo,
        "sender": envelope.mail_from,
        "recipients": list(envelope.rcpt_tos),
    }


def _via(connection: Connection) -> dict[str, object]:
    """The balancer a client came through (`proxy_ip`), behind --proxy-protocol; else nothing."""
    return {} if connection.proxy_ip is None else {"proxy_ip": str(connection.proxy_ip)}


def _trace(connection: Connection, envelope: Envelope, reply: SmtpReply) -> dict[str, object]:
    return {**_who(connection, envelope), "code": reply.code, "status": reply.status}
