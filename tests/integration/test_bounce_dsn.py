"""A bounce reached after the message was stored sends an RFC 3464 DSN through `--relay`, to
the envelope sender only, and never for the null sender."""

from __future__ import annotations

import asyncio
import email
import smtplib
import threading
import time
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.integration.receiver import DEADLINE, in_process, settings_for

pytestmark = pytest.mark.integration

RULES = """\
version: 1
name: bounces
domains: [example.com]
rules:
  - name: store-then-bounce
    actions:
      - {type: s3, bucket: mail, prefix: in/}
      - {type: bounce, smtp_reply_code: "550", status_code: "5.1.1", message: "No such user here", sender: mailer-daemon@example.com}
"""


class Collector:
    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        content = envelope.original_content or b""
        self.received.append((str(envelope.mail_from), list(envelope.rcpt_tos), content))
        return "250 2.0.0 Ok"


@pytest.fixture
def relay() -> Iterator[tuple[int, Collector]]:
    """An aiosmtpd sink on port 0, in a thread of its own, standing in for the outbound relay."""
    collector = Collector()
    ready = threading.Event()
    holder: dict[str, object] = {}

    def main() -> None:
        async def go() -> None:
            loop = asyncio.get_running_loop()
            server = await loop.create_server(lambda: SMTP(collector, loop=loop), "127.0.0.1", 0)
            holder["port"], holder["loop"] = server.sockets[0].getsockname()[1], loop
            stop = asyncio.Event()
            holder["stop"] = stop
            ready.set()
            await stop.wait()
            server.close()

        asyncio.run(go())

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(DEADLINE)
    yield int(str(holder["port"])), collector
    loop, stop = holder["loop"], holder["stop"]
    assert isinstance(loop, asyncio.AbstractEventLoop)
    assert isinstance(stop, asyncio.Event)
    loop.call_soon_threadsafe(stop.set)
    thread.join(DEADLINE)


def send(port: int, mail_from: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail(
            mail_from,
            ["nobody@example.com"],
            b"Subject: to bounce\r\nX-Mark: original\r\n\r\nbody\r\n",
        )


def test_dsn_goes_to_the_envelope_sender_through_the_relay(
    tmp_path: Path, relay: tuple[int, Collector]
) -> None:
    port, collector = relay
    settings = settings_for(tmp_path, RULES, relay=("127.0.0.1", port))
    with in_process(settings) as running:
        send(running.port, "alice@sender.example")
        running.wait_stored(1)
        running.wait_idle()
    deadline = time.monotonic() + DEADLINE
    while not collector.received and time.monotonic() < deadline:
        time.sleep(0.02)
    [(mail_from, rcpt_tos, content)] = collector.received
    assert (mail_from, rcpt_tos) == ("<>", ["alice@sender.example"])
    dsn = email.message_from_bytes(content)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    assert dsn["From"] == "mailer-daemon@example.com"
    assert dsn["To"] == "alice@sender.example"
    parts = dsn.get_payload()
    assert isinstance(parts, list)
    status = parts[1]
    assert isinstance(status, Message)
    assert status.get_content_type() == "message/delivery-status"
    text = status.as_string()
    assert "Status: 5.1.1" in text
    assert "Diagnostic-Code: smtp; 550 5.1.1 No such user here" in text
    original = parts[2]
    assert isinstance(original, Message)
    assert "X-Mark: original" in original.as_string()


def test_no_dsn_for_the_null_sender(tmp_path: Path, relay: tuple[int, Collector]) -> None:
    port, collector = relay
    settings = settings_for(tmp_path, RULES, relay=("127.0.0.1", port))
    with in_process(settings) as running:
        send(running.port, "")
        running.wait_stored(1)
        running.wait_idle()
        assert running.queued() == []
    assert collector.received == []
