"""The listening server: one `InboundSMTP` session per connection, port 0 for tests."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Any

from inbound.receive.connections import ConnectionCounter
from inbound.receive.limits import ReceiverLimits
from inbound.receive.policy import SessionPolicy
from inbound.receive.smtp import InboundSMTP


@dataclass
class SmtpServer:
    """Listens on HOST:PORT (port 0 picks a free port: see `port`) and serves sessions."""

    policy: SessionPolicy[Any]
    host: str = "127.0.0.1"
    port: int = 2525
    hostname: str = "localhost"
    limits: ReceiverLimits = field(default_factory=ReceiverLimits)
    tls_context: ssl.SSLContext | None = None
    counter: ConnectionCounter = field(default_factory=ConnectionCounter)
    _server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._session, self.host, self.port)
        sockets = self._server.sockets
        if sockets:
            self.port = int(sockets[0].getsockname()[1])

    def _session(self) -> InboundSMTP:
        return InboundSMTP(
            self.policy,
            limits=self.limits,
            counter=self.counter,
            hostname=self.hostname,
            tls_context=self.tls_context,
            loop=asyncio.get_running_loop(),
        )

    def stop_accepting(self) -> None:
        """No new connections; idle sessions are closed, the others after their transaction."""
        if self._server is not None:
            self._server.close()
        for session in list(self.counter.sessions):
            session.shut_down()

    async def wait_idle(self, timeout: float) -> bool:
        """After `stop_accepting`: wait until the sessions in flight have ended."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.counter.total > 0 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return self.counter.total == 0
