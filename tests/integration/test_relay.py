"""RelaySender against a real SMTP sink (aiosmtpd on port 0), with and without STARTTLS."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from inbound.core.errors import InputError, PermanentActionError, TransientActionError
from inbound.core.services import BounceRequest
from inbound.message.dsn import build_dsn
from inbound.targets.relay import RelaySender, parse_relay
from inbound.tls import self_signed_context

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

BOUNCE = BounceRequest(
    message_id="0123456789abcdefghijklmnopqrstuvwxyz0123",
    sender="mailer-daemon@example.com",
    to="alice@sender.example",
    recipients=("support@example.com", "sales@example.com"),
    smtp_reply_code="550",
    status_code="5.7.1",
    diagnostic="Message rejected: virus",
    reporting_mta="mx.inbound.example",
    original_headers=b"From: alice@sender.example\r\nSubject: hi\r\n",
)
NOW = datetime(2026, 11, 23, 10, 0, 5, tzinfo=UTC)


def dsn(bounce: BounceRequest = BOUNCE) -> bytes:
    return build_dsn(bounce, arrival=NOW, now=NOW, dsn_id="dsn1")


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    tls: bool


@dataclass
class SinkHandler:
    """Collects envelopes; answers RCPT or DATA with a fixed reply when told to."""

    rcpt_reply: str | None = None
    data_reply: str | None = None
    received: list[Received] = field(default_factory=list)

    async def handle_RCPT(  # noqa: N802 - aiosmtpd hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        if self.data_reply:
            return self.data_reply
        content = envelope.original_content or b""
        assert isinstance(content, bytes)
        self.received.append(
            Received(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                content=content,
                tls=session.ssl is not None,
            )
        )
        return "250 2.0.0 OK"


@dataclass
class Sink:
    port: int
    handler: SinkHandler
    connections: list[int] = field(default_factory=list)


@contextlib.asynccontextmanager
async def sink(
    handler: SinkHandler, tls_context: ssl.SSLContext | None = None
) -> AsyncIterator[Sink]:
    loop = asyncio.get_running_loop()
    running = Sink(port=0, handler=handler)

    def protocol() -> SMTP:
        running.connections.append(1)
        return SMTP(handler, hostname="sink.test", tls_context=tls_context)

    server = await loop.create_server(protocol, "127.0.0.1", 0)
    running.port = server.sockets[0].getsockname()[1]
    try:
        yield running
    finally:
        server.close()
        await server.wait_closed()


def delivery_status(content: bytes) -> list[Message]:
    message = message_from_bytes(content)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    parts = message.get_payload()
    assert isinstance(parts, list)
    report = parts[1]
    assert isinstance(report, Message)
    assert report.get_content_type() == "message/delivery-status"
    blocks = report.get_payload()
    assert isinstance(blocks, list)
    return [block for block in blocks if isinstance(block, Message)]


def assert_dsn_delivered(handler: SinkHandler, *, tls: bool) -> None:
    assert len(handler.received) == 1
    got = handler.received[0]
    assert got.mail_from == "<>"  # aiosmtpd spells the null reverse path so
    assert got.rcpt_tos == ("alice@sender.example",)
    assert got.tls is tls
    blocks = delivery_status(got.content)[1:]
    assert [b["Final-Recipient"] for b in blocks] == [
        "rfc822; support@example.com",
        "rfc822; sales@example.com",
    ]
    for block in blocks:
        assert block["Action"] == "failed"
        assert block["Status"] == "5.7.1"
        assert block["Diagnostic-Code"] == "smtp; 550 5.7.1 Message rejected: virus"


def test_plain_relay_gets_the_dsn_from_the_null_sender() -> None:
    async def run() -> SinkHandler:
        handler = SinkHandler()
        async with sink(handler) as running:
            await RelaySender("127.0.0.1", running.port, timeout=10).send(BOUNCE, dsn())
        return handler

    assert_dsn_delivered(asyncio.run(run()), tls=False)


def test_starttls_when_offered_with_a_verifying_context(tmp_path: Path) -> None:
    server_context = self_signed_context(tmp_path, "localhost")
    client_context = ssl.create_default_context(cafile=tmp_path / "self-signed.crt")

    async def run() -> SinkHandler:
        handler = SinkHandler()
        async with sink(handler, server_context) as running:
            relay = RelaySender("localhost", running.port, tls_context=client_context, timeout=10)
            await relay.send(BOUNCE, dsn())
        return handler

    assert_dsn_delivered(asyncio.run(run()), tls=True)


def test_starttls_is_opportunistic_by_default(tmp_path: Path) -> None:
    # The default context encrypts without checking the certificate (RFC 7435).
    server_context = self_signed_context(tmp_path, "localhost")

    async def run() -> SinkHandler:
        handler = SinkHandler()
        async with sink(handler, server_context) as running:
            await RelaySender("127.0.0.1", running.port, timeout=10).send(BOUNCE, dsn())
        return handler

    assert_dsn_delivered(asyncio.run(run()), tls=True)


@pytest.mark.parametrize(
    ("handler", "error"),
    [
        pytest.param(
            SinkHandler(data_reply="451 4.3.0 try again later"), TransientActionError, id="data_451"
        ),
        pytest.param(
            SinkHandler(rcpt_reply="450 4.2.1 mailbox busy"), TransientActionError, id="rcpt_450"
        ),
        pytest.param(
            SinkHandler(rcpt_reply="550 5.1.1 no such user"), PermanentActionError, id="rcpt_550"
        ),
        pytest.param(
            SinkHandler(data_reply="554 5.7.1 rejected"), PermanentActionError, id="data_554"
        ),
    ],
)
def test_replies_map_to_transient_or_permanent(
    handler: SinkHandler, error: type[Exception]
) -> None:
    async def run() -> None:
        async with sink(handler) as running:
            await RelaySender("127.0.0.1", running.port, timeout=10).send(BOUNCE, dsn())

    with pytest.raises(error) as caught:
        asyncio.run(run())
    reply = handler.rcpt_reply or handler.data_reply
    assert reply is not None
    assert reply in str(caught.value)
    assert "Message rejected" not in str(caught.value)  # no message content in the error
    assert handler.received == []


def test_nothing_listening_is_transient_and_quick() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(TransientActionError, match=r"relay 127\.0\.0\.1"):
        asyncio.run(RelaySender("127.0.0.1", port, timeout=10).send(BOUNCE, dsn()))
    assert time.monotonic() - started < 5


def test_silent_relay_times_out_as_transient() -> None:
    async def run() -> None:
        writers: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)  # accepts, never greets

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            await RelaySender("127.0.0.1", port, timeout=0.5).send(BOUNCE, dsn())
        finally:
            server.close()
            for writer in writers:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            await server.wait_closed()

    started = time.monotonic()
    with pytest.raises(TransientActionError):
        asyncio.run(run())
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "to",
    [
        pytest.param("", id="null_sender"),
        pytest.param("  ", id="blank"),
        pytest.param("alice@sender.example>\r\nRCPT TO:<other@x.example", id="injection"),
        pytest.param("a@x.example, b@y.example", id="two_addresses"),
    ],
)
def test_no_usable_envelope_sender_is_permanent_and_sends_nothing(to: str) -> None:
    handler = SinkHandler()

    async def run() -> Sink:
        async with sink(handler) as running:
            with pytest.raises(PermanentActionError):
                await RelaySender("127.0.0.1", running.port, timeout=10).send(
                    replace(BOUNCE, to=to), dsn()
                )
        return running

    running = asyncio.run(run())
    assert running.connections == []
    assert handler.received == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("smtp.example.com:587", ("smtp.example.com", 587), id="host_port"),
        pytest.param("192.0.2.1:25", ("192.0.2.1", 25), id="ipv4"),
        pytest.param("[2001:db8::1]:2525", ("2001:db8::1", 2525), id="ipv6"),
        pytest.param("relay.example.com", ("relay.example.com", 25), id="default_port"),
        pytest.param(" localhost:1025 ", ("localhost", 1025), id="spaces"),
    ],
)
def test_parse_relay(text: str, expected: tuple[str, int]) -> None:
    assert parse_relay(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("host:port", "port 'port'", id="port_not_a_number"),
        pytest.param("host:0", "port '0'", id="port_zero"),
        pytest.param("host:65536", "port '65536'", id="port_too_big"),
        pytest.param("2001:db8::1:25", "brackets", id="bare_ipv6"),
        pytest.param("[nope]:25", "not an IPv6 address", id="bad_ipv6"),
        pytest.param("[::1", "missing ']'", id="unclosed_bracket"),
        pytest.param("bad host:25", "not a host name", id="space_in_host"),
        pytest.param(":25", "not a host name", id="no_host"),
    ],
)
def test_parse_relay_rejects_junk(text: str, reason: str) -> None:
    with pytest.raises(InputError, match="--relay") as caught:
        parse_relay(text)
    assert reason in str(caught.value)
    assert "HOST:PORT" in str(caught.value)
