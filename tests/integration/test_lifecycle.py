"""The process lifecycle of `inbound serve` (SPEC sections 6 and 7): SIGTERM drains, SIGHUP
reloads, one server per data directory, metrics, start-up errors, and what the logs hold."""

from __future__ import annotations

import json
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.integration import flaky_functions
from tests.integration.receiver import (
    DEADLINE,
    ROOT,
    RULES,
    Child,
    events_of,
    free_port,
    start_child,
    wait_for,
)

pytestmark = pytest.mark.integration

T = TypeVar("T")
QUEUED_AS = re.compile(r"queued as ([0-9a-z]{40})")
GATE_ARN = "arn:aws:lambda:us-east-1:123456789012:function:gate"


# -- helpers -----------------------------------------------------------------------------


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Child]]:
    """Start `inbound serve` children; whatever is still running at the end is killed."""
    children: list[Child] = []

    def run(*args: str) -> Child:
        child = start_child(tmp_path, *args)
        children.append(child)
        return child

    yield run
    for child in children:
        if child.process.poll() is None:
            child.kill()


def stop(child: Child) -> None:
    child.signal(signal.SIGTERM)
    assert child.process.wait(DEADLINE) == 0, child.log.read_text()


def message(token: str, *, to: str, body: str = "") -> bytes:
    return (
        "From: alice@sender.example\r\n"
        f"To: {to}\r\n"
        f"Subject: {token}\r\n"
        f"Message-ID: <{token}@client.test>\r\n"
        "\r\n"
        f"{body or 'Hello.'}\r\n"
    ).encode()


def session(port: int) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
    client.ehlo("client.test")
    return client


def rcpt_reply(port: int, address: str) -> tuple[int, bytes]:
    """The RCPT TO answer for one address, in a session of its own."""
    with session(port) as client:
        client.mail("alice@sender.example")
        return client.rcpt(address)


def send(port: int, rcpt: str, token: str, body: str = "") -> tuple[int, str]:
    """One message in its own session: the DATA reply code and the message ID (or text)."""
    with session(port) as client:
        assert client.mail("alice@sender.example")[0] == 250
        assert client.rcpt(rcpt)[0] == 250
        code, text = client.data(message(token, to=rcpt, body=body))
    match = QUEUED_AS.search(text.decode())
    return code, match.group(1) if match else text.decode()


def s3_object(child: Child, prefix: str, message_id: str) -> Path:
    return child.data_dir / "s3" / "mail" / prefix / message_id


def inbound_serve(*args: str) -> subprocess.CompletedProcess[str]:
    """`inbound serve` expected to refuse to start."""
    return subprocess.run(
        [sys.executable, "-m", "inbound", "serve", "--listen", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        cwd=ROOT,
        check=False,
    )


# -- SIGTERM ------------------------------------------------------------------------------


def test_sigterm_finishes_the_transaction_in_flight_refuses_new_ones_and_exits_0(
    tmp_path: Path, serve: Callable[..., Child]
) -> None:
    child = serve()
    client = session(child.port)
    assert client.mail("alice@sender.example")[0] == 250
    assert client.rcpt("drain@example.com")[0] == 250
    client.putcmd("data")
    assert client.getreply()[0] == 354
    body = message("in-flight", to="drain@example.com")
    client.send(body[:40])  # half a message

    child.signal(signal.SIGTERM)
    wait_for(lambda: events_of(child, "server.stopping"), "server.stopping")
    # The listening socket closes with that event: a new client is refused outright.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", child.port), timeout=5).close()
    assert child.process.poll() is None, "the server must wait for the transaction in flight"

    client.send(body[40:] + b".\r\n")
    code, text = client.getreply()
    assert code == 250, text
    match = QUEUED_AS.search(text.decode())
    assert match, text
    message_id = match.group(1)
    # The transaction is over: the session is closed with 421 (RFC 5321 §3.8).
    assert client.getreply() == (421, b"4.3.2 Service shutting down, try again later")
    client.close()
    quit_at = time.monotonic()
    assert child.process.wait(DEADLINE) == 0
    assert time.monotonic() - quit_at < 3.0, "exit took longer than a few seconds"
    [stopped] = events_of(child, "server.stopped")
    assert stopped["drained"] is True

    # Acknowledged during the drain: stored already, or waiting on disk for the next start.
    queued = child.data_dir / "spool" / "queue" / message_id
    stored = s3_object(child, "in", message_id)
    assert stored.is_file() or queued.is_dir()
    again = serve()
    wait_for(stored.is_file, f"s3 in/{message_id} after a restart")
    assert b"Subject: in-flight" in stored.read_bytes()
    stop(again)


def test_sigterm_while_the_end_of_data_is_decided_waits_for_its_reply(
    tmp_path: Path, serve: Callable[..., Child]
) -> None:
    """After the final dot the reply takes a while (scans, the commit). A SIGTERM then must
    not answer 421 and close: the message would be queued after the client was told to try
    again, and sent twice."""
    silent = socket.create_server(("127.0.0.1", 0))  # a spamd that accepts and never answers
    try:
        (tmp_path / "rules.yaml").write_text(
            RULES.replace(
                "rules:\n",
                "rules:\n  - name: scan\n    recipients: [scan@example.com]"
                "\n    scan_enabled: true\n    actions:\n      - {type: s3, bucket: mail, prefix: in/}\n",
                1,
            )
        )
        child = serve("--spamd", f"127.0.0.1:{silent.getsockname()[1]}", "--scan-timeout", "3s")
        client = session(child.port)
        assert client.mail("alice@sender.example")[0] == 250
        assert client.rcpt("scan@example.com")[0] == 250
        client.putcmd("data")
        assert client.getreply()[0] == 354
        client.send(message("scanned", to="scan@example.com") + b".\r\n")
        waiting, _ = silent.accept()  # the scan has begun: the reply to DATA is being decided
        child.signal(signal.SIGTERM)
        wait_for(lambda: events_of(child, "server.stopping"), "server.stopping")
        code, text = client.getreply()
        assert code == 250, text  # after the scan timed out (spam PROCESSING_FAILED)
        assert client.getreply() == (421, b"4.3.2 Service shutting down, try again later")
        client.close()
        waiting.close()
        assert child.process.wait(DEADLINE) == 0
    finally:
        silent.close()


def test_sigterm_does_not_wait_for_idle_sessions(
    tmp_path: Path, serve: Callable[..., Child]
) -> None:
    """SIGTERM finishes the transactions in flight: an idle session has none to finish."""
    child = serve()
    idle = session(child.port)
    try:
        child.signal(signal.SIGTERM)
        wait_for(lambda: events_of(child, "server.stopping"), "server.stopping")
        try:
            exit_code = child.process.wait(5)
        except subprocess.TimeoutExpired:
            exit_code = None
        assert exit_code == 0, "an idle session held the shutdown (the drain timeout is 30 s)"
    finally:
        idle.close()


def test_sigterm_refuses_a_new_transaction_on_an_open_session(
    tmp_path: Path, serve: Callable[..., Child]
) -> None:
    """A transaction begun after SIGTERM is not in flight: 421 (RFC 3463 4.3.2) or a close."""
    child = serve()
    idle = session(child.port)
    try:
        child.signal(signal.SIGTERM)
        wait_for(lambda: events_of(child, "server.stopping"), "server.stopping")
        try:
            code, text = idle.mail("alice@sender.example")
        except smtplib.SMTPServerDisconnected:
            code, text = 421, b"(closed)"
        assert code == 421, f"MAIL after SIGTERM was answered {code} {text!r}"
    finally:
        idle.close()


# -- SIGHUP -------------------------------------------------------------------------------

GATED_RULES = f"""\
version: 1
name: lifecycle
domains: [example.com]
rules:
  - name: store
    recipients: [known@example.com]
    actions:
      - {{type: lambda, function_arn: "{GATE_ARN}", invocation_type: request_response}}
      - {{type: s3, bucket: mail, prefix: v1/}}
"""

RELOADED_RULES = """\
version: 1
name: lifecycle
domains: [example.com]
rules:
  - name: store
    recipients: [known@example.com, new@example.com]
    actions:
      - {type: s3, bucket: mail, prefix: v2/}
"""


def test_sighup_reloads_rules_for_new_sessions_and_old_messages_keep_theirs(
    tmp_path: Path, serve: Callable[..., Child], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls_dir = tmp_path / "calls"
    calls_dir.mkdir()
    monkeypatch.setenv(flaky_functions.ENV, str(calls_dir))
    rules = tmp_path / "rules.yaml"
    rules.write_text(GATED_RULES)
    child = serve(
        "--lambda", "gate=tests.integration.flaky_functions:fail_until_flag",
        "--retry-delay", "0.1s",
    )  # fmt: skip
    code, text = rcpt_reply(child.port, "new@example.com")
    assert (code, text[:5]) == (550, b"5.1.1")

    # Received under the old rules; its dispatch is held by a failing function.
    code, old_id = send(child.port, "known@example.com", "before-reload")
    assert code == 250
    wait_for(lambda: events_of(child, "action.failed", old_id), "the gate to fail once")

    rules.write_text(RELOADED_RULES)
    child.signal(signal.SIGHUP)
    [reloaded] = wait_for(lambda: events_of(child, "rules.reloaded"), "rules.reloaded")
    assert reloaded["rules_digest"] != events_of(child, "server.started")[0]["rules_digest"]
    assert rcpt_reply(child.port, "new@example.com")[0] == 250
    code, new_id = send(child.port, "new@example.com", "after-reload")
    assert code == 250

    (calls_dir / flaky_functions.SUCCEED_FLAG).touch()  # release the old message
    wait_for(lambda: events_of(child, "message.dispatched", old_id), "the old message")
    wait_for(lambda: events_of(child, "message.dispatched", new_id), "the new message")
    # The old message ran the old rule set (lambda, then s3 to v1/), not the new one.
    assert s3_object(child, "v1", old_id).is_file()
    assert not s3_object(child, "v2", old_id).exists()
    assert s3_object(child, "v2", new_id).is_file()
    assert not s3_object(child, "v1", new_id).exists()
    assert flaky_functions.calls(calls_dir, "fail_until_flag", new_id) == 0
    stop(child)


PLAIN_RULES = """\
version: 1
name: lifecycle
domains: [example.com]
rules:
  - name: store
    recipients: [known@example.com]
    actions:
      - {type: s3, bucket: mail, prefix: in/}
"""

# Line 8 misspells `bucket`.
BROKEN_RULES = """\
version: 1
name: lifecycle
domains: [example.com]
rules:
  - name: store
    recipients: [known@example.com, new@example.com]
    actions:
      - {type: s3, buckt: mail, prefix: in/}
"""


def test_sighup_with_an_invalid_file_keeps_the_old_rules(
    tmp_path: Path, serve: Callable[..., Child]
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(PLAIN_RULES)
    child = serve()
    assert rcpt_reply(child.port, "new@example.com")[0] == 550

    rules.write_text(BROKEN_RULES)
    child.signal(signal.SIGHUP)
    [failed] = wait_for(lambda: events_of(child, "rules.reload_failed"), "rules.reload_failed")
    assert failed["level"] == "error"
    assert any(e.startswith(f"{rules}:8:") and "buckt" in e for e in failed["errors"]), failed
    assert events_of(child, "rules.reloaded") == []
    # Still the old rules: new@ refused, known@ accepted and stored.
    assert rcpt_reply(child.port, "new@example.com")[0] == 550
    code, message_id = send(child.port, "known@example.com", "kept-rules")
    assert code == 250
    wait_for(s3_object(child, "in", message_id).is_file, "the message under the old rules")

    rules.write_text(BROKEN_RULES.replace("buckt", "bucket"))
    child.signal(signal.SIGHUP)
    wait_for(lambda: events_of(child, "rules.reloaded"), "rules.reloaded after the fix")
    assert rcpt_reply(child.port, "new@example.com")[0] == 250
    stop(child)


def test_sighup_with_a_missing_file_keeps_the_old_rules(
    tmp_path: Path, serve: Callable[..., Child]
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(PLAIN_RULES)
    child = serve()
    rules.unlink()
    child.signal(signal.SIGHUP)
    [failed] = wait_for(lambda: events_of(child, "rules.reload_failed"), "rules.reload_failed")
    assert any(str(rules) in e and "no such file" in e for e in failed["errors"]), failed
    assert rcpt_reply(child.port, "known@example.com")[0] == 250
    stop(child)


# -- one server per data directory, metrics ------------------------------------------------------


def test_a_second_server_on_the_same_data_dir_exits_2(
    tmp_path: Path, serve: Callable[..., Child]
) -> None:
    child = serve()
    second = inbound_serve(
        "--rules", str(tmp_path / "rules.yaml"), "--data-dir", str(child.data_dir)
    )
    assert second.returncode == 2
    assert "Traceback" not in second.stderr
    assert second.stderr.strip() == (
        f"inbound serve: {child.data_dir}: another inbound serve is using this data directory"
    )
    # The first one is unaffected.
    assert rcpt_reply(child.port, "someone@example.com")[0] == 250
    stop(child)


def metric(port: int, name: str, labels: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_count_the_messages_by_reply_code(
    tmp_path: Path, serve: Callable[..., Child]
) -> None:
    metrics_port = free_port()
    child = serve("--metrics", f"127.0.0.1:{metrics_port}")
    assert metric(metrics_port, "inbound_messages_total", 'code="250"') is None
    sent = 3
    for n in range(sent):
        assert send(child.port, f"user{n}@example.com", f"metrics-{n}")[0] == 250
    with session(child.port) as client:  # RULES bounce virus@ in the session
        client.mail("alice@sender.example")
        client.rcpt("virus@example.com")
        assert client.data(message("bounced", to="virus@example.com"))[0] == 550
    assert metric(metrics_port, "inbound_messages_total", 'code="250"') == sent
    assert metric(metrics_port, "inbound_messages_total", 'code="550"') == 1
    stop(child)


# -- start-up errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_exits_2_with_a_message_and_no_traceback(
    tmp_path: Path, workers: str
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = inbound_serve(
            "--rules",
            str(rules),
            "--data-dir",
            str(tmp_path / "data"),
            "--listen",
            f"127.0.0.1:{port}",
            "--workers",
            workers,
        )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().endswith(
        f"inbound serve: --listen 127.0.0.1:{port}: cannot listen there: Address already in use"
    )


@pytest.mark.parametrize(
    "case",
    ["missing_rules", "broken_rules", "tls_cert_without_key"],
)
def test_bad_start_exits_2_with_a_message_and_no_traceback(tmp_path: Path, case: str) -> None:
    rules = tmp_path / "rules.yaml"
    data = ["--data-dir", str(tmp_path / "data")]
    if case == "missing_rules":
        result = inbound_serve("--rules", str(rules), *data)
        expected = f"inbound serve: {rules}: no such file"
    elif case == "broken_rules":
        rules.write_text(BROKEN_RULES)
        result = inbound_serve("--rules", str(rules), *data)
        expected = f"{rules}:8:"
    else:
        rules.write_text(RULES)
        cert = tmp_path / "cert.pem"
        cert.write_text("not used")
        result = inbound_serve("--rules", str(rules), *data, "--tls-cert", str(cert))
        expected = "inbound serve: --tls-cert and --tls-key go together"
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert expected in result.stderr
    assert '"server.started"' not in result.stderr
    if case == "broken_rules":
        assert "buckt" in result.stderr
        assert "did you mean 'bucket'" in result.stderr


# -- logs ----------------------------------------------------------------------------------------


def test_logs_are_json_lines_without_message_bodies(
    tmp_path: Path, serve: Callable[..., Child]
) -> None:
    marker = f"BODY-MARKER-{uuid.uuid4().hex}"
    child = serve()
    code, stored_id = send(child.port, "someone@example.com", "logged", body=f"secret {marker}")
    assert code == 250
    with session(child.port) as client:
        client.mail("alice@sender.example")
        client.rcpt("virus@example.com")
        reply = client.data(message("refused", to="virus@example.com", body=f"secret {marker}"))
        assert reply[0] == 550
    wait_for(lambda: events_of(child, "message.dispatched", stored_id), "message.dispatched")
    stop(child)

    text = child.log.read_text()
    assert marker not in text
    lines = text.splitlines()
    assert lines
    for line in lines:
        entry = json.loads(line)  # every line is one JSON object
        assert isinstance(entry, dict)
        assert {"ts", "level", "event"} <= entry.keys(), entry
    names = {json.loads(line)["event"] for line in lines}
    expected = {
        "server.started",
        "message.received",
        "message.spooled",
        "action.succeeded",
        "message.dispatched",
        "message.rejected",
        "server.stopped",
    }
    assert expected <= names


def test_logs_stay_json_lines_when_a_client_sends_junk(
    tmp_path: Path, serve: Callable[..., Child]
) -> None:
    """An unknown command, and a body pipelined after a refused DATA (read as commands)."""
    marker = f"BODY-MARKER-{uuid.uuid4().hex}"
    child = serve()
    with (
        socket.create_connection(("127.0.0.1", child.port), timeout=10) as sock,
        sock.makefile("rb") as replies,
    ):
        assert replies.readline().startswith(b"220 ")
        sock.sendall(
            b"EHLO client.test\r\nXYZZY\r\nMAIL FROM:<alice@sender.example>\r\nDATA\r\n"
            + f"{marker} is the first word of a body line\r\n.\r\nQUIT\r\n".encode()
        )
        answers = replies.read().decode()  # until the server closes after QUIT
    assert "503 5.5.1" in answers  # DATA without RCPT
    assert answers.rstrip().endswith("221 2.0.0 Bye")
    stop(child)

    text = child.log.read_text()
    not_json = []
    for line in text.splitlines():
        try:
            json.loads(line)
        except ValueError:
            not_json.append(line)
    assert not_json == [], "log lines that are not JSON"
    assert marker.lower() not in text.lower()


def test_rules_that_scan_without_scanners_are_named_at_start(
    tmp_path: Path, serve: Callable[..., Child]
) -> None:
    scanning = RULES.replace("  - name: store\n", "  - name: store\n    scan_enabled: true\n")
    assert scanning != RULES
    (tmp_path / "rules.yaml").write_text(scanning)
    child = serve("--clamd", "127.0.0.1:9")
    warned = events_of(child, "scanners.missing")
    assert [(e["rules"], e["missing"]) for e in warned] == [(["store"], ["--spamd"])]
    stop(child)
