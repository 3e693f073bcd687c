"""Tracing mail from the log and the metrics, as an operator of a Postfix MX would (issue 14):
one JSON line per refusal and per message answered, naming the client, its HELO, the envelope
and the reply, never the subject or the body; every reply to DATA counted by its code; a TLS
handshake that fails says who and why in one quiet line.

Everything is read from outside: a real `inbound serve` child's stderr and its `--metrics`.
"""

from __future__ import annotations

import re
import signal
import socket
import ssl
import struct
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.receiver import (
    RULES,
    Child,
    events_of,
    free_port,
    log_events,
    start_child,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

SUBJECT = "Quarterly secret plans"
BODY = "the body text nobody logs"


@pytest.fixture(scope="module")
def child(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Child, int]]:
    metrics = free_port()
    server = start_child(
        tmp_path_factory.mktemp("operator"),
        "--metrics",
        f"127.0.0.1:{metrics}",
        "--max-message-size",
        "20k",
        "--tls-self-signed",
    )
    yield server, metrics
    server.kill()


def counted(port: int, code: int) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    match = re.search(rf'^inbound_messages_total\{{code="{code}"\}} (\S+)$', body, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def session(port: int, helo: str, sender: str, rcpt: str) -> socket.socket:
    """A raw session up to the 354 (smtplib would rewrite line endings)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    file = sock.makefile("rb")
    assert file.readline().startswith(b"220")
    sock.sendall(f"EHLO {helo}\r\n".encode())
    while not file.readline().startswith(b"250 "):
        pass
    for command in (f"MAIL FROM:<{sender}>", f"RCPT TO:<{rcpt}>", "DATA"):
        sock.sendall(f"{command}\r\n".encode())
        assert file.readline()[:1] in {b"2", b"3"}
    sock.settimeout(10)
    return sock


def reply_to(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
    sock.close()
    return data.decode()


def one(child: Child, event: str, **fields: object) -> dict[str, Any]:
    def found() -> list[dict[str, Any]]:
        return [e for e in events_of(child, event) if all(e.get(k) == v for k, v in fields.items())]

    matches = wait_for(found, f"{event} {fields}")
    assert len(matches) == 1, matches
    return matches[0]


def test_a_refused_recipient_names_the_address_the_client_and_the_sender(
    child: tuple[Child, int],
) -> None:
    server, _ = child
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    file = sock.makefile("rb")
    file.readline()
    sock.sendall(b"EHLO refused.client.test\r\nMAIL FROM:<eve@spam.example>\r\n")
    sock.sendall(b"RCPT TO:<nobody@elsewhere.example>\r\n")
    line = b""
    while not line.startswith(b"550"):  # the EHLO lines and the 250 to MAIL come first
        line = file.readline()
        assert line, "closed before the reply to RCPT"
    assert line.startswith(b"550 5.7.1")
    sock.close()
    entry = one(server, "recipient.rejected", recipient="nobody@elsewhere.example")
    assert entry["client_ip"] == "127.0.0.1"
    assert entry["helo"] == "refused.client.test"
    assert entry["sender"] == "eve@spam.example"
    assert (entry["code"], entry["status"]) == (550, "5.7.1")


def test_an_accepted_message_is_one_line_with_who_and_the_reply_and_no_content(
    child: tuple[Child, int],
) -> None:
    server, metrics = child
    before = counted(metrics, 250)
    sock = session(server.port, "accepted.client.test", "alice@sender.example", "bob@example.com")
    sock.sendall(f"Subject: {SUBJECT}\r\n\r\n{BODY}\r\n.\r\n".encode())
    reply = reply_to(sock)
    assert reply.startswith("250 2.0.0 Ok: queued as "), reply
    message_id = reply.split()[-1]
    line = one(server, "message.received", message_id=message_id)
    assert line["client_ip"] == "127.0.0.1"
    assert line["helo"] == "accepted.client.test"
    assert line["sender"] == "alice@sender.example"
    assert line["recipients"] == ["bob@example.com"]
    assert (line["code"], line["status"]) == (250, "2.0.0")
    assert counted(metrics, 250) == before + 1
    text = server.log.read_text()
    assert SUBJECT not in text
    assert BODY not in text


@pytest.mark.parametrize(
    ("name", "data", "reply", "reason"),
    [
        ("bare_lf_smuggling", b"Subject: x\r\n\r\nline\n.\r\n", "550 5.5.2", "bare_line_ending"),
        # 25 lines of 1000 octets: over --max-message-size 20k.
        ("too_big", b"Subject: x\r\n\r\n" + (b"y" * 998 + b"\r\n") * 25, "552 5.3.4", "too_big"),
    ],
    ids=["bare_lf_smuggling", "too_big"],
)
def test_a_refusal_inside_data_is_one_line_and_counted(
    child: tuple[Child, int], name: str, data: bytes, reply: str, reason: str
) -> None:
    server, metrics = child
    code = int(reply[:3])
    before = counted(metrics, code)
    sender = f"{name}@sender.example"
    sock = session(server.port, f"{name}.client.test", sender, "bob@example.com")
    sock.sendall(data + b".\r\n")
    assert reply_to(sock).startswith(reply)
    line = one(server, "message.refused", sender=sender)
    assert line["reason"] == reason
    assert line["client_ip"] == "127.0.0.1"
    assert line["helo"] == f"{name}.client.test"
    assert line["recipients"] == ["bob@example.com"]
    assert f"{line['code']} {line['status']}" == reply
    assert line["level"] in {"info", "warning"}
    assert counted(metrics, code) == before + 1


def test_a_client_that_closes_right_after_the_final_dot_leaves_a_trail(
    child: tuple[Child, int],
) -> None:
    server, _ = child
    sender = "gone@sender.example"
    sock = session(server.port, "gone.client.test", sender, "bob@example.com")
    sock.sendall(b"Subject: x\r\n\r\nbye\r\n.\r\n")
    # An abortive close (RST), as a client that gives up at once: the reply cannot be sent.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()

    def trail() -> list[dict[str, Any]]:
        return [
            e
            for e in log_events(server.log)
            if e.get("sender") == sender
            and e.get("event") in {"message.received", "message.abandoned"}
        ]

    line = wait_for(trail, "a line about the message of the client that left")[0]
    assert line["client_ip"] == "127.0.0.1"
    assert line["recipients"] == ["bob@example.com"]
    assert line["message_id"]


def handshake_failure(port: int, context: ssl.SSLContext) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    file = sock.makefile("rb")
    file.readline()
    sock.sendall(b"EHLO scanner.test\r\n")
    while not file.readline().startswith(b"250 "):
        pass
    sock.sendall(b"STARTTLS\r\n")
    assert file.readline().startswith(b"220")
    with pytest.raises((ssl.SSLError, OSError)):
        context.wrap_socket(sock, server_hostname="mx.test").do_handshake()
    sock.close()


def _client(maximum: ssl.TLSVersion, ciphers: str | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():  # TLS 1.0 and 1.1 are deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = maximum
    context.set_ciphers(ciphers or "ALL:@SECLEVEL=0")
    return context


@pytest.mark.parametrize(
    ("maximum", "ciphers", "reason"),
    [
        (ssl.TLSVersion.TLSv1_1, None, "UNSUPPORTED_PROTOCOL"),
        (ssl.TLSVersion.TLSv1_2, "AES128-SHA:@SECLEVEL=0", "NO_SHARED_CIPHER"),
    ],
    ids=["old_protocol", "no_shared_cipher"],
)
def test_a_failed_tls_handshake_is_one_quiet_line_with_the_peer_and_the_reason(
    child: tuple[Child, int], maximum: ssl.TLSVersion, ciphers: str | None, reason: str
) -> None:
    server, _ = child
    handshake_failure(server.port, _client(maximum, ciphers))
    line = wait_for(
        lambda: [e for e in events_of(server, "tls.failed") if e.get("reason") == reason],
        f"tls.failed with reason {reason}",
    )[0]
    assert line["client_ip"] == "127.0.0.1"
    assert line["level"] in {"info", "warning"}
    # Nothing at error level came with it (asyncio's or the session's own).
    assert not [e for e in log_events(server.log) if e["level"] == "error"]


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one-process", "workers"])
def test_what_check_warns_about_is_logged_once_at_start_and_on_reload(
    tmp_path: Path, workers: list[str]
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.replace("domains: [", "domains: [Example.COM, "))
    server = start_child(tmp_path, *workers)
    try:
        started = wait_for(lambda: events_of(server, "rules.warning"), "rules.warning at start")
        assert [e["warning"] for e in started] == [
            f"{rules}:3:24: warning: domains[1]: domain 'example.com' is listed twice "
            "(first at line 3): kept once"
        ]
        assert started[0]["level"] == "warning"
        rules.write_text(
            RULES.replace(
                "domains: [", "filters: [{name: f, policy: allow, cidr: 10.0.0.1/8}]\ndomains: ["
            )
        )
        server.signal(signal.SIGHUP)
        again = wait_for(
            lambda: [e for e in events_of(server, "rules.warning") if "host bits" in e["warning"]],
            "rules.warning on reload",
        )
        assert again[0]["warning"].startswith(f"{rules}:3:")
        # Every process reloads, but the warnings are the rules', not a process's: once (the
        # supervisor's), after every process has logged its `rules.reloaded`.
        reloads = 1 + (int(workers[1]) if workers else 0)
        wait_for(lambda: len(events_of(server, "rules.reloaded")) >= reloads, "every reload")
        warned = [e for e in events_of(server, "rules.warning") if "host bits" in e["warning"]]
        assert len(warned) == 1, warned
    finally:
        server.kill()


def test_a_session_closed_for_unknown_verbs_says_so(child: tuple[Child, int]) -> None:
    server, _ = child
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        file = sock.makefile("rb")
        assert file.readline().startswith(b"220")
        sock.sendall(b"".join(b"FOO%d\r\n" % n for n in range(5)))
        replies = file.read().decode().splitlines()
    assert replies[-1].startswith("421 4.7.0 "), replies
    assert one(server, "session.limited", reason="unknown_commands")["client_ip"] == "127.0.0.1"
