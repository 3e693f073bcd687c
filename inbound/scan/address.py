"""Where a scanning daemon listens (`host:port`, `[v6]:port`, `/path.sock`, `unix:/path`) and
connecting to it with asyncio. Parsing raises `InputError` naming the flag; it never connects.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from inbound.core.errors import InputError

# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
UNIX_PATH_MAX = 107
_HOSTNAME = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.?"
)
_FORMS = "HOST:PORT, [IPv6]:PORT, /path/to.sock or unix:/path/to.sock"


@dataclass(frozen=True, slots=True)
class TcpAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UnixAddress:
    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


DaemonAddress = TcpAddress | UnixAddress


def parse_address(
    text: str, *, what: str = "address", default_port: int | None = None
) -> DaemonAddress:
    """`127.0.0.1:3310`, `localhost:783`, `[::1]:3310`, `/run/clamd.sock` or `unix:clamd.sock`.

    `what` names the setting in the error (`--clamd`). With `default_port`, a bare host or
    `[v6]` is accepted and gets that port.
    """

    def bad(reason: str) -> InputError:
        return InputError(f"{what} {text!r}: {reason} (expected {_FORMS})")

    value = text.strip()
    if not value:
        raise bad("empty")
    if value.startswith(("unix:", "/")):
        path = value.removeprefix("unix:")
        if not path:
            raise bad("no socket path after 'unix:'")
        if "\0" in path:
            raise bad("NUL in the socket path")
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            raise bad(f"a unix socket path can have at most {UNIX_PATH_MAX} bytes")
        return UnixAddress(path)
    if value.startswith("["):
        inside, sep, rest = value[1:].partition("]")
        if not sep:
            raise bad("missing ']' after the IPv6 address")
        try:
            host = str(ipaddress.IPv6Address(inside))
        except ValueError:
            raise bad(f"{inside!r} is not an IPv6 address") from None
        if not rest and default_port is not None:
            return TcpAddress(host, default_port)
        if not rest.startswith(":"):
            raise bad("missing ':PORT' after ']'")
        return TcpAddress(host, _port(rest[1:], bad))
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = value, ""
    if "://" in value:
        raise bad("a URL is not an address: leave out the scheme")
    if ":" in host:
        if _is_ipv6(host) or _is_ipv6(value):
            raise bad("an IPv6 address needs brackets, as in [::1]:3310")
        raise bad(f"{host!r} is not a host name or IPv4 address")
    if not _HOSTNAME.fullmatch(host):
        raise bad(f"{host!r} is not a host name or IPv4 address")
    if not sep:
        if default_port is None:
            raise bad("missing ':PORT'")
        return TcpAddress(host, default_port)
    return TcpAddress(host, _port(port_text, bad))


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _port(text: str, bad: Callable[[str], InputError]) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5 or not 0 < int(text) < 65536:
        raise bad(f"port {text!r} is not a number from 1 to 65535")
    return int(text)


async def connect(address: DaemonAddress) -> socket.socket:
    """A connected non-blocking socket, for `loop.sock_sendall`/`sock_recv`; raises `OSError`.

    The low-level socket API, not streams: when clamd closes early (its stream limit), a
    stream reader would discard the reply it already received and raise the reset instead.
    """
    loop = asyncio.get_running_loop()
    if isinstance(address, UnixAddress):
        targets: list[tuple[int, str | tuple[Any, ...]]] = [(socket.AF_UNIX, address.path)]
    else:
        infos = await loop.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
        targets = [(family, sockaddr) for family, _, _, _, sockaddr in infos]
    last: OSError = OSError(f"no address for {address}")
    for family, sockaddr in targets:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, sockaddr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise last


def describe_os_error(exc: OSError) -> str:
    """A short reason for a log line: `connection refused`, not a traceback."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the daemon running?)"
    if isinstance(exc, FileNotFoundError):
        return "no socket at that path (is the daemon running?)"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "the daemon closed the connection"
    return exc.strerror or str(exc) or type(exc).__name__
