"""The listening server: one `InboundSMTP` session per connection, port 0 for tests.

It binds HOST:PORT itself, or serves a socket that is already listening (`sock`): the one a
supervisor shares among its worker processes.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from inbound.core.errors import InputError
from inbound.receive.connections import ConnectionCounter
from inbound.receive.limits import ReceiverLimits
from inbound.receive.policy import SessionPolicy
from inbound.receive.proxy import ProxyTrust
from inbound.receive.smtp import InboundSMTP


class ListenError(InputError):
    def __init__(self, host: str, port: int, error: OSError) -> None:
        # asyncio's message repeats the address; the errno's own words are enough.
        reason = os.strerror(error.errno) if error.errno else str(error)
        super().__init__(f"--listen {host}:{port}: cannot listen there: {reason}")


def listening_socket(
    host: str, port: int, *, backlog: int = 1024, patience: float = 0.0
) -> socket.socket:
    """A listening, non-blocking TCP socket on HOST:PORT, to share with worker processes.

    An address in use is tried again for `patience` seconds (the processes of a server that
    was just killed may still be closing it).
    """
    deadline = time.monotonic() + patience
    while True:
        try:
            infos = socket.getaddrinfo(
                host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            sock = socket.create_server((host, port), family=infos[0][0], backlog=backlog)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            raise ListenError(host, port, exc) from None
        sock.setblocking(False)
        return sock


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
    sock: socket.socket | None = None
    # --proxy-protocol: connections from these addresses start with a PROXY header.
    proxies: ProxyTrust | None = None
    _server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.sock is not None:
            self._server = await loop.create_server(self._session, sock=self.sock)
        else:
            try:
                self._server = await loop.create_server(self._session, self.host, self.port)
            except OSError as exc:  # the port is taken, the address is not ours
                raise ListenError(self.host, self.port, exc) from None
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
            proxies=self.proxies,
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
