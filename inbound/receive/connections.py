"""Connections in total and per client IP, and the live sessions a shutdown must reach."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from inbound.receive.limits import ReceiverLimits


class Session(Protocol):
    def shut_down(self) -> None: ...


@dataclass
class ConnectionCounter:
    """Connections in total and per client IP, shared by all sessions of one server."""

    total: int = 0
    per_ip: Counter[str] = field(default_factory=Counter)
    # The live sessions, so that a shutdown can reach them.
    sessions: set[Session] = field(default_factory=set)

    def admit(self, ip: str, limits: ReceiverLimits) -> bool:
        if self.total >= limits.max_connections or self.per_ip[ip] >= limits.max_connections_per_ip:
            return False
        self.total += 1
        self.per_ip[ip] += 1
        return True

    def release(self, ip: str) -> None:
        self.total -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]
