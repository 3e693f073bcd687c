"""`inbound serve --proxy-protocol CIDR,...` behind a load balancer (SPEC section 7b), against a
real receiver on 127.0.0.1: the balancer connects from 127.0.0.1 (trusted), other clients from
127.0.0.2 and up (a client socket bound to that address before it connects).

What a user notices: the proxied address in the stored message's Received and Received-SPF
headers and in the log, receipt filters and `--max-connections-per-ip` judging it (with
`--workers` too), and refusals (with `proxy.refused` log lines) for a balancer without a valid
header and for anyone else sending one."""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import pytest

from inbound.receive.proxy import V2_SIGNATURE
from tests.integration.receiver import (
    DEADLINE,
    ROOT,
    RULES,
    Child,
    events_of,
    start_child,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

BALANCER = "127.0.0.1"
BLOCKED = "192.0.2.66"
# The receiver's --command-timeout, and so the longest a balancer may take over its header.
HEADER_SECONDS = 2.0
QUEUED = re.compile(r"^250 2\.0\.0 Ok: queued as (\S+)$")
ACCESS_DENIED = "554 5.7.1 Access denied"
TOO_MANY = "421 4.7.0 Too many connections, try again later"
NOT_TRUSTED = "554 5.7.1 PROXY header not accepted from this address"
FILTERED = RULES.replace(
    "rules:\n", f"filters:\n  - {{name: spammer, policy: block, cidr: {BLOCKED}/32}}\nrules:\n", 1
)


def v1(source: str) -> bytes:
    family = "TCP4" if isinstance(ip_address(source), IPv4Address) else "TCP6"
    destination = "10.0.0.1" if family == "TCP4" else "2001:db8::1"
    return f"PROXY {family} {source} {destination} 40000 25\r\n".encode()


def v2(source: str | None) -> bytes:
    """A v2 PROXY header for `source` (TCP4 or TCP6), or a LOCAL one (a health check)."""
    if source is None:
        return V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, 0)
    address = ip_address(source)
    if isinstance(address, IPv4Address):
        family, destination = 0x11, IPv4Address("10.0.0.1").packed
    else:
        family, destination = 0x21, IPv6Address("2001:db8::1").packed
    block = address.packed + destination + struct.pack("!HH", 40000, 25)
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, family, len(block)) + block


class Client:
    """A raw SMTP client from `source` (127.0.0.1 is the trusted balancer)."""

    def __init__(self, port: int, source: str = BALANCER, header: bytes = b"") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.bind((source, 0))
        self.sock.connect(("127.0.0.1", port))
        self.buffer = b""
        if header:
            self.sock.sendall(header)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        """One whole reply (multi-line joined by newlines), or <closed>."""
        lines: list[str] = []
        while True:
            while b"\r\n" not in self.buffer:
                try:
                    chunk = self.sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    return "\n".join(lines) if lines else "<closed>"
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            lines.append(line.decode())
            if len(lines[-1]) < 4 or lines[-1][3] != "-":
                return "\n".join(lines)

    def command(self, line: str) -> str:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def closed_silently(self) -> bool:
        """The server closed without a byte."""
        return self.reply() == "<closed>" and not self.buffer

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Child]:
    tmp_path = tmp_path_factory.mktemp("proxy")
    (tmp_path / "rules.yaml").write_text(FILTERED)
    child = start_child(
        tmp_path,
        "--proxy-protocol",
        f"{BALANCER}/32,2001:db8::/32",
        "--max-connections-per-ip",
        "1",
        "--command-timeout",
        f"{HEADER_SECONDS:g}s",
    )
    yield child
    child.kill()


def stored(child: Child) -> dict[str, bytes]:
    folder = child.data_dir / "s3" / "mail" / "in"
    if not folder.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}


def send_message(client: Client) -> str:
    assert client.reply().startswith("220 mx.test")
    assert client.command("EHLO client.example").startswith("250")
    assert client.command("MAIL FROM:<alice@sender.example>") == "250 2.1.0 Ok"
    assert client.command("RCPT TO:<bob@example.com>") == "250 2.1.5 Ok"
    assert client.command("DATA").startswith("354")
    client.send(b"From: alice@sender.example\r\nSubject: s\r\n\r\nbody\r\n.\r\n")
    queued = QUEUED.match(client.reply())
    assert queued, "the message was not queued"
    client.command("QUIT")
    return queued.group(1)


@pytest.mark.parametrize(
    ("header", "client_ip"),
    [
        (v1, "198.51.100.11"),
        (v1, "2001:db8:5::11"),
        (v2, "198.51.100.12"),
        (v2, "2001:db8:5::12"),
    ],
    ids=["v1-tcp4", "v1-tcp6", "v2-tcp4", "v2-tcp6"],
)
def test_the_proxied_address_is_the_client_in_headers_and_logs(
    server: Child, header: object, client_ip: str
) -> None:
    assert callable(header)
    client = Client(server.port, header=header(client_ip))
    try:
        message_id = send_message(client)
    finally:
        client.close()
    message = wait_for(lambda: stored(server).get(message_id), "the stored message")
    head = message.split(b"\r\n\r\n", 1)[0].decode().replace("\r\n\t", " ").replace("\r\n ", " ")
    lines = head.split("\r\n")
    received = next(line for line in lines if line.startswith("Received: from"))
    spf = next(line for line in lines if line.startswith("Received-SPF:"))
    assert client_ip in received
    assert BALANCER not in received
    assert f"client-ip={client_ip};" in spf
    (line,) = wait_for(lambda: events_of(server, "message.received", message_id), "the log")
    assert line["client_ip"] == client_ip
    assert line["proxy_ip"] == BALANCER


def test_a_receipt_filter_judges_the_proxied_address(server: Child) -> None:
    blocked = Client(server.port, header=v1(BLOCKED))
    try:
        assert blocked.reply() == ACCESS_DENIED
        assert blocked.reply() == "<closed>"
    finally:
        blocked.close()
    refused = wait_for(lambda: events_of(server, "connection.refused"), "connection.refused")
    assert [(e["client_ip"], e["proxy_ip"]) for e in refused] == [(BLOCKED, BALANCER)]
    # The balancer's own health check (v2 LOCAL) is judged as the balancer: let in.
    check = Client(server.port, header=v2(None))
    try:
        assert check.reply().startswith("220 mx.test")
        assert check.command("QUIT").startswith("221")
    finally:
        check.close()


def test_connections_are_counted_per_proxied_address(server: Child) -> None:
    first = Client(server.port, header=v2("203.0.113.1"))
    second = Client(server.port, header=v1("203.0.113.2"))
    try:
        assert first.reply().startswith("220 mx.test")
        assert second.reply().startswith("220 mx.test")
        third = Client(server.port, header=v1("203.0.113.1"))
        try:
            assert third.reply() == TOO_MANY
        finally:
            third.close()
    finally:
        first.close()
        second.close()


def test_a_limited_session_is_logged_with_its_balancer(server: Child) -> None:
    client = Client(server.port, header=v1("203.0.113.9"))
    try:
        assert client.reply().startswith("220 mx.test")
        replies = [client.command(f"BOGUS{n}") for n in range(5)]
        assert replies[-1].startswith("421 4.7.0")
    finally:
        client.close()
    limited = wait_for(lambda: events_of(server, "session.limited"), "session.limited")
    assert [(e["client_ip"], e["proxy_ip"]) for e in limited] == [("203.0.113.9", BALANCER)]


def refusals(child: Child, reason: str) -> list[dict[str, object]]:
    return [e for e in events_of(child, "proxy.refused") if e.get("reason") == reason]


def assert_still_serving(child: Child, client_ip: str) -> None:
    client = Client(child.port, header=v1(client_ip))
    try:
        assert client.reply().startswith("220 mx.test")
    finally:
        client.close()


def test_a_balancer_without_a_header_is_closed_without_a_reply(server: Child) -> None:
    before = len(refusals(server, "missing"))
    client = Client(server.port)
    try:
        client.send(b"EHLO client.example\r\n")
        assert client.closed_silently()
    finally:
        client.close()
    wait_for(lambda: len(refusals(server, "missing")) > before, "proxy.refused")
    line = refusals(server, "missing")[-1]
    assert line["proxy_ip"] == BALANCER
    assert line["level"] == "warning"


@pytest.mark.parametrize(
    ("source", "header"),
    [("127.0.0.2", v1("198.51.100.99")), ("127.0.0.3", v2("198.51.100.98"))],
    ids=["v1", "v2"],
)
def test_a_header_from_an_untrusted_address_is_refused(
    server: Child, source: str, header: bytes
) -> None:
    client = Client(server.port, source=source)
    try:
        assert client.reply().startswith("220 mx.test")  # the server speaks first here
        client.send(header)
        assert client.reply() == NOT_TRUSTED
        assert client.reply() == "<closed>"
    finally:
        client.close()
    wait_for(
        lambda: [e for e in refusals(server, "untrusted") if e["client_ip"] == source],
        "proxy.refused",
    )
    # The header's address is never used: no log line names it.
    text = server.log.read_text()
    assert "198.51.100.99" not in text
    assert "198.51.100.98" not in text


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"PROXY TCP4 198.51.100.20 10.0.0.1 40000 25\n", "malformed"),
        (b"PROXY TCP4 198.51.100.020 10.0.0.1 40000 25\r\n", "malformed"),
        (b"PROXY TCP9 198.51.100.20 10.0.0.1 40000 25\r\n", "malformed"),
        (b"PROXY UNKNOWN " + b"f" * 300 + b"\r\n", "oversized"),
        (V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, 60000), "oversized"),
        (V2_SIGNATURE + struct.pack("!BBH", 0x31, 0x11, 12) + bytes(12), "unsupported"),
        (v2("198.51.100.21")[:20], "truncated"),
        (b"PROXY TCP4 198.51", "truncated"),
        (b"", "missing"),
    ],
    ids=["lone-lf", "octal", "family", "v1-long", "v2-long", "v3", "v2-cut", "v1-cut", "eof"],
)
def test_a_bad_header_is_refused_and_the_receiver_keeps_serving(
    server: Child, data: bytes, reason: str
) -> None:
    before = len(refusals(server, reason))
    client = Client(server.port)
    try:
        client.send(data)
        if reason in ("truncated", "missing"):
            client.sock.shutdown(socket.SHUT_WR)
        assert client.closed_silently()
    finally:
        client.close()
    wait_for(lambda: len(refusals(server, reason)) > before, f"proxy.refused {reason}")
    assert_still_serving(server, "198.51.100.22")


@pytest.mark.parametrize("header", [b"", b"PROXY TCP4 198.51.100.23 "], ids=["silent", "slow"])
def test_a_slow_or_silent_balancer_is_cut_off_at_the_deadline(server: Child, header: bytes) -> None:
    """A slowloris header, a byte at a time, gets no more time than a silent peer."""
    before = len(refusals(server, "timeout"))
    client = Client(server.port, header=header)
    started = time.monotonic()
    try:
        client.sock.settimeout(0.25)
        closed = False
        for byte in b"10.0.0.1 40000 25\r"[: int(HEADER_SECONDS * 4) + 4]:
            try:
                if client.sock.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            if header:
                try:
                    client.send(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
        client.sock.settimeout(DEADLINE)
        assert closed or client.closed_silently()
    finally:
        client.close()
    elapsed = time.monotonic() - started
    assert HEADER_SECONDS - 0.5 < elapsed < HEADER_SECONDS + 2.0
    wait_for(lambda: len(refusals(server, "timeout")) > before, "proxy.refused timeout")
    assert_still_serving(server, "198.51.100.24")


def test_with_workers_connections_are_counted_per_proxied_address(tmp_path: Path) -> None:
    child = start_child(
        tmp_path,
        "--proxy-protocol",
        BALANCER,
        "--max-connections-per-ip",
        "1",
        "--workers",
        "2",
    )
    try:
        first = Client(child.port, header=v2("203.0.113.1"))
        second = Client(child.port, header=v1("203.0.113.2"))
        try:
            assert first.reply().startswith("220 mx.test")
            assert second.reply().startswith("220 mx.test")
            # Whichever worker takes them, the third and fourth meet the shared count.
            for _ in range(2):
                again = Client(child.port, header=v1("203.0.113.1"))
                try:
                    assert again.reply() == TOO_MANY
                finally:
                    again.close()
        finally:
            first.close()
            second.close()
    finally:
        child.kill()


@pytest.mark.parametrize("value", ["10.0.0.1/8", "10.0.0.0/8,balancer", ""])
def test_a_bad_network_exits_2_naming_the_flag(tmp_path: Path, value: str) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "inbound",
            "serve",
            "--rules",
            str(tmp_path / "rules.yaml"),
            "--data-dir",
            str(tmp_path / "data"),
            "--listen",
            "127.0.0.1:0",
            "--proxy-protocol",
            value,
        ],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 2
    assert "--proxy-protocol" in done.stderr
    assert "Traceback" not in done.stderr
