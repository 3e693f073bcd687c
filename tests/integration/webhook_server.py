"""A real HTTP(S) server on loopback for webhook tests: it records every request and answers
each one from a script (status, headers, or no answer at all), then 200."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DEADLINE = 20.0


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    # Accept the request and never answer (until the server stops).
    hang: bool = False


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # time.monotonic()


@dataclass
class Hook:
    """The server's state, shared with its handler threads."""

    script: list[Answer] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)
    port: int = 0
    scheme: str = "http"

    def url(self, path: str = "/hooks/mail") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def answer(self, *answers: Answer) -> None:
        with self.lock:
            self.script.extend(answers)

    def wait(self, count: int, deadline: float = DEADLINE) -> list[Received]:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.02)
        with self.lock:
            raise AssertionError(f"{len(self.received)} requests, expected {count}")

    def requests(self) -> list[Received]:
        with self.lock:
            return list(self.received)


def _handler(hook: Hook) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            with hook.lock:
                hook.received.append(
                    Received(
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                        time.monotonic(),
                    )
                )
                answer = hook.script.pop(0) if hook.script else Answer()
            if answer.hang:
                hook.stopping.wait(DEADLINE * 3)
                self.close_connection = True
                return
            self.send_response(answer.status)
            for name, value in answer.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@contextlib.contextmanager
def webhook_server(
    *, port: int = 0, tls: tuple[Path, Path] | None = None, hook: Hook | None = None
) -> Iterator[Hook]:
    """Serve on 127.0.0.1 (`port`, or a free one) until the block ends; `tls`: (cert, key)."""
    hook = hook if hook is not None else Hook()
    hook.stopping.clear()
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(hook))
    server.daemon_threads = True
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls[0]), str(tls[1]))
        server.socket = context.wrap_socket(server.socket, server_side=True)
        hook.scheme = "https"
    hook.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield hook
    finally:
        hook.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(DEADLINE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
