"""`inbound serve --targets aws` against a moto server of its own: while AWS cannot be reached
the actions fail transiently and nothing is lost, and everything lands once it is back; a
missing bucket is permanent and dead-letters the message with the reason.

"AWS away" is a forwarding port in front of moto that the test closes and opens again: a moto
restarted for real would come back empty, without the bucket, which is a different failure."""

from __future__ import annotations

import contextlib
import json
import signal
import smtplib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests.integration.daemons import _free_port, _moto_ready
from tests.integration.receiver import DEADLINE, Child, events_of, start_child, wait_for
from tests.unavailable import unavailable

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

RULES = """\
version: 1
name: aws
domains: [example.com]
rules:
  - name: store
    recipients: [in@example.com]
    actions:
      - {type: s3, bucket: inbound-mail, prefix: in/}
  - name: nowhere
    recipients: [lost@example.com]
    actions:
      - {type: s3, bucket: no-such-bucket, prefix: x/}
"""


class Moto:
    """A moto server on a fixed port, which a test can stop and start again."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: _moto_ready(self.endpoint), "moto server")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(DEADLINE)

    def s3(self) -> object:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 - moto's dummy credentials
        )


class Gate:
    """A TCP port that forwards to `target` while open, and refuses connections while closed."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = _free_port()
        self.listener: socket.socket | None = None
        self.connections: list[socket.socket] = []

    def open(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        for connection in self.connections:
            connection.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def own_moto(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Moto]:
    try:
        import moto.server  # noqa: F401, PLC0415 - only to know whether it is installed
    except ImportError:
        unavailable("moto server not installed (pip install -c constraints.txt -e '.[dev]')")
    server = Moto()
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    yield server
    server.stop()


def send(child: Child, rcpt: str, n: int) -> str:
    with smtplib.SMTP("127.0.0.1", child.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("alice@sender.example")
        client.rcpt(rcpt)
        code, text = client.data(f"Subject: message {n}\r\n\r\nbody {n}\r\n".encode())
    assert code == 250, text
    return text.decode().rsplit(" ", 1)[1]


def stored_keys(moto: Moto) -> list[str]:
    listing = moto.s3().list_objects_v2(Bucket="inbound-mail")  # type: ignore[attr-defined]
    return sorted(item["Key"] for item in listing.get("Contents", []))


def test_aws_away_then_back_loses_nothing(
    own_moto: Moto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    own_moto.start()
    own_moto.s3().create_bucket(Bucket="inbound-mail")  # type: ignore[attr-defined]
    gate = Gate(own_moto.port)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{gate.port}")
    child = start_child(
        tmp_path, "--targets", "aws", "--retry-delay", "0.2s", "--max-retry-delay", "1s"
    )
    try:
        # AWS cannot be reached: every message is still accepted (the spool has it).
        ids = [send(child, "in@example.com", n) for n in range(5)]
        wait_for(lambda: len(events_of(child, "message.deferred")) >= 5, "deferred messages")
        failed = events_of(child, "action.failed")
        assert failed
        assert all(event["transient"] for event in failed)
        assert stored_keys(own_moto) == []
        gate.open()
        wait_for(lambda: len(stored_keys(own_moto)) == 5, "the five objects in S3", deadline=60)
        assert stored_keys(own_moto) == sorted(f"in/{message_id}" for message_id in ids)
        wait_for(lambda: not any((child.data_dir / "spool" / "queue").iterdir()), "empty queue")
    finally:
        gate.close()
        child.signal(signal.SIGTERM)
        child.process.wait(DEADLINE)


def test_a_missing_bucket_dead_letters_with_the_reason(own_moto: Moto, tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    own_moto.start()
    child = start_child(tmp_path, "--targets", "aws", "--retry-delay", "0.2s")
    try:
        message_id = send(child, "lost@example.com", 1)
        dead = child.data_dir / "spool" / "dead" / message_id
        wait_for(dead.exists, "the dead letter")
        state = json.loads((dead / "state.json").read_text())
        assert state["dead_reason"].startswith("permanent failure")
        assert "NoSuchBucket" in state["dead_reason"]
        [event] = events_of(child, "message.dead_lettered")
        assert event["message_id"] == message_id
    finally:
        child.signal(signal.SIGTERM)
        child.process.wait(DEADLINE)
