"""Bounce DSNs through the outbound relay: the mailer service of `--relay HOST:PORT`.

`RelayMailer` builds the RFC 3464 report and hands it to the relay. Without a relay, the target
set's own mailer applies (the local one records the request in an outbox; the AWS one refuses).
It owns only the report's envelope (ID, dates); it must not know rules or other services.
"""

from __future__ import annotations

from datetime import UTC, datetime

from inbound.core.ids import MessageIdGenerator
from inbound.core.services import BounceRequest
from inbound.message.dsn import build_dsn
from inbound.targets.relay import RelaySender


class RelayMailer:
    def __init__(self, relay: RelaySender) -> None:
        self.relay = relay
        self._ids = MessageIdGenerator()

    async def send_bounce(self, bounce: BounceRequest) -> None:
        now = datetime.now(UTC)
        dsn = build_dsn(bounce, arrival=bounce.arrival or now, now=now, dsn_id=self._ids.next())
        await self.relay.send(bounce, dsn)
