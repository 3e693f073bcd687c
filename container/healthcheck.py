"""The image's HEALTHCHECK: is the `inbound serve` of this container answering SMTP?

It reads the receiver's own command line (PID 1's, so `--listen` given to `docker run` is
followed), connects, waits for the greeting and says QUIT. Any SMTP greeting is healthy: a
client refused by a receipt IP filter (554) or by the connection limits (421) still proves the
receiver is serving. Exit 0 healthy, 1 unhealthy (Docker's convention); stdlib only.
"""

from __future__ import annotations

import re
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_LISTEN = "127.0.0.1:2525"  # `inbound serve`'s own default
TIMEOUT = 5.0
_GREETING = re.compile(rb"^[245]\d\d[ -]")


def listen_address(argv: Sequence[str]) -> tuple[str, int] | None:
    """Where a receiver started with `argv` listens, as a client here would reach it;
    None when `argv` is not `inbound serve` (another command has nothing to check)."""
    if "serve" not in argv:
        return None
    listen = DEFAULT_LISTEN
    for i, arg in enumerate(argv):
        if arg == "--listen" and i + 1 < len(argv):
            listen = argv[i + 1]
        elif arg.startswith("--listen="):
            listen = arg.partition("=")[2]
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    # A wildcard address is reached on loopback; `:2525` means every address, as in serve.
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - compared, not bound
        host = "127.0.0.1" if host != "::" else "::1"
    return host, int(port)


def greets(host: str, port: int, timeout: float = TIMEOUT) -> str | None:
    """None if an SMTP greeting came within `timeout`, else what went wrong."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            line = conn.makefile("rb").readline(1024)
            if not _GREETING.match(line):
                return f"no SMTP greeting from {host}:{port}: {line[:80]!r}"
            conn.sendall(b"QUIT\r\n")
    except OSError as exc:
        return f"{host}:{port}: {exc}"
    return None


def main() -> int:
    argv = Path("/proc/1/cmdline").read_bytes().decode(errors="replace").split("\0")
    address = listen_address(argv)
    if address is None:
        return 0
    problem = greets(*address)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
