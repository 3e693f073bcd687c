"""The image's healthcheck finds the receiver where its command line says it listens."""

from __future__ import annotations

import socket
import threading

import pytest

from container.healthcheck import greets, listen_address

SERVE = ["/opt/inbound/bin/python", "/opt/inbound/bin/inbound", "serve", "--rules", "r.yaml"]


@pytest.mark.parametrize(
    ("argv", "address"),
    [
        pytest.param(SERVE, ("127.0.0.1", 2525), id="serve_default"),
        pytest.param([*SERVE, "--listen", "0.0.0.0:2525"], ("127.0.0.1", 2525), id="image_default"),
        pytest.param([*SERVE, "--listen", "127.0.0.1:2600"], ("127.0.0.1", 2600), id="flag"),
        pytest.param([*SERVE, "--listen=10.0.0.5:25"], ("10.0.0.5", 25), id="flag_equals"),
        pytest.param([*SERVE, "--listen", ":2525"], ("127.0.0.1", 2525), id="every_address"),
        pytest.param([*SERVE, "--listen", "[::]:2525"], ("::1", 2525), id="ipv6_wildcard"),
        pytest.param(
            ["/sbin/docker-init", "--", "inbound", "serve", "--listen", "0.0.0.0:25"],
            ("127.0.0.1", 25),
            id="under_init",
        ),
        pytest.param(["inbound", "check", "r.yaml"], None, id="not_serve"),
    ],
)
def test_listen_address(argv: list[str], address: tuple[str, int] | None) -> None:
    assert listen_address(argv) == address


def serve_once(reply: bytes) -> tuple[int, threading.Thread]:
    listener = socket.create_server(("127.0.0.1", 0))
    port = int(listener.getsockname()[1])

    def answer() -> None:
        with listener, listener.accept()[0] as conn:
            conn.sendall(reply)
            conn.recv(100)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return port, thread


@pytest.mark.parametrize(
    ("reply", "healthy"),
    [
        pytest.param(b"220 mx.test ESMTP\r\n", True, id="greeting"),
        pytest.param(b"554 5.7.1 Access denied\r\n", True, id="refused_by_filter"),
        pytest.param(b"HTTP/1.1 400 Bad Request\r\n", False, id="not_smtp"),
    ],
)
def test_greets(reply: bytes, healthy: bool) -> None:
    port, thread = serve_once(reply)
    assert (greets("127.0.0.1", port, timeout=5) is None) is healthy
    thread.join(5)


def test_nothing_listening_is_unhealthy() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    problem = greets("127.0.0.1", port, timeout=5)
    assert problem is not None
    assert f"127.0.0.1:{port}" in problem
