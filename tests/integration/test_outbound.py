"""The outbound service for whole messages: `--relay` (a real aiosmtpd sink) and the local outbox."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
from pathlib import Path

import pytest

from inbound.core.errors import PermanentActionError, TransientActionError
from inbound.core.services import NoOutbound, OutboundMail, Services
from inbound.targets.local import LocalOutbox, LocalTargets
from inbound.targets.memory import MemoryServices
from inbound.targets.relay import RelayOutbound, RelaySender
from tests.integration.test_relay import SinkHandler, sink

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CONTENT = b"From: alice@sender.example\r\nSubject: hi\r\n\r\nbody\r\n"
MAIL = OutboundMail(
    mail_from="SRS0=AAAAAAAA=JZ=sender.example=alice@fwd.example",
    rcpt_to=("bob@dest.example", "carol@dest.example"),
    content=CONTENT,
    message_id="0123456789abcdefghijklmnopqrstuvwxyz0123",
    index=1,
)


def test_the_relay_gets_the_whole_message_with_its_envelope() -> None:
    handler = SinkHandler()

    async def run() -> int | None:
        async with sink(handler) as running:
            outbound = RelayOutbound(RelaySender("127.0.0.1", running.port, timeout=10))
            await outbound.send(MAIL)
            await outbound.send(OutboundMail("", ("alice@sender.example",), CONTENT, "m", 2))
            return await outbound.max_size()

    size = asyncio.run(run())
    first, bounce = handler.received
    assert first.mail_from == MAIL.mail_from
    assert first.rcpt_tos == MAIL.rcpt_to
    assert first.content == CONTENT
    assert bounce.mail_from == "<>"
    assert bounce.rcpt_tos == ("alice@sender.example",)
    assert size == 33554432  # aiosmtpd's default SIZE


def test_a_refused_recipient_ends_the_transaction_before_data() -> None:
    handler = SinkHandler(rcpt_reply="550 5.1.1 no such user")

    async def run() -> None:
        async with sink(handler) as running:
            outbound = RelayOutbound(RelaySender("127.0.0.1", running.port, timeout=10))
            await outbound.send(MAIL)

    with pytest.raises(PermanentActionError, match=r"550 5\.1\.1 no such user"):
        asyncio.run(run())
    assert handler.received == []


def test_a_relay_that_is_down_is_transient_for_sends_and_sizes() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outbound = RelayOutbound(RelaySender("127.0.0.1", port, timeout=5))
    with pytest.raises(TransientActionError, match=r"relay 127\.0\.0\.1"):
        asyncio.run(outbound.send(MAIL))
    with pytest.raises(TransientActionError, match=r"relay 127\.0\.0\.1"):
        asyncio.run(outbound.max_size())


def test_the_local_outbox_writes_the_message_and_one_line_per_send(tmp_path: Path) -> None:
    outbox = LocalOutbox(tmp_path)

    async def run() -> None:
        await outbox.send(MAIL)
        await outbox.send(OutboundMail("", ("alice@sender.example",), b"dsn", MAIL.message_id, 2))

    asyncio.run(run())
    folder = tmp_path / "forward" / MAIL.message_id
    assert (folder / "1.eml").read_bytes() == CONTENT
    assert (folder / "2.eml").read_bytes() == b"dsn"
    lines = (tmp_path / "forward" / "outbox.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["index"], r["mailFrom"], r["rcptTo"], r["file"]) for r in records] == [
        (1, MAIL.mail_from, list(MAIL.rcpt_to), f"{MAIL.message_id}/1.eml"),
        (2, "", ["alice@sender.example"], f"{MAIL.message_id}/2.eml"),
    ]
    for path in [folder / "1.eml", tmp_path / "forward" / "outbox.jsonl"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert asyncio.run(outbox.max_size()) is None


def test_the_local_outbox_refuses_a_path_for_a_message_id(tmp_path: Path) -> None:
    with pytest.raises(PermanentActionError):
        asyncio.run(LocalOutbox(tmp_path).send(OutboundMail("", ("a@b",), b"x", "../x", 1)))
    assert not (tmp_path / "forward" / "outbox.jsonl").exists()


def test_services_without_an_outbound_path_refuse_and_the_fake_records(tmp_path: Path) -> None:
    services = Services.of(LocalTargets(tmp_path))
    assert isinstance(services.outbound, NoOutbound)
    with pytest.raises(PermanentActionError):
        asyncio.run(services.outbound.send(MAIL))
    fakes = MemoryServices()
    fakes.outbound.size = 1000
    asyncio.run(fakes.services.outbound.send(MAIL))
    assert fakes.outbound.sent == [MAIL]
    assert asyncio.run(fakes.services.outbound.max_size()) == 1000
