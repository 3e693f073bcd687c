"""The SMTP facts of one message: who connected, how, and the envelope they gave."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

IpAddress = IPv4Address | IPv6Address


@dataclass(frozen=True, slots=True)
class Connection:
    client_ip: IpAddress
    helo: str = "localhost"
    tls: bool = False
    # Behind --proxy-protocol: the balancer the client came through (for the log only; every
    # decision is on client_ip, the address in its PROXY header).
    proxy_ip: IpAddress | None = None

    @classmethod
    def of(cls, client_ip: str, helo: str = "localhost", *, tls: bool = False) -> Connection:
        return cls(ip_address(client_ip), helo, tls)


@dataclass(frozen=True, slots=True)
class Envelope:
    # The reverse path without angle brackets; "" is the null sender <>.
    mail_from: str
    rcpt_tos: tuple[str, ...]
