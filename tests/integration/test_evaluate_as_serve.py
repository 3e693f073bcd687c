"""`inbound evaluate` answers DATA as `inbound serve` does for the same bytes: each message is
sent raw to a real receiver and evaluated from a file, and the two replies are compared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from inbound.receive.limits import ReceiverLimits
from tests.integration.receiver import ROOT, Running, in_process, settings_for
from tests.integration.wire import Wire

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

HEAD = b"From: alice@sender.example\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\n"
MESSAGES = {
    "binary_junk": bytes(range(256)) * 8,
    "bare_lf_before_dot": HEAD + b"one\r\n\n.\r\nMAIL FROM:<x@y.example>\r\n",
    "bare_cr": HEAD + b"one\rtwo\r\n",
    "line_of_1001_octets": HEAD + b"x" * 999 + b"\r\n",
    "over_max_message_size": HEAD + b"y" * 70_000 + b"\r\n",
    "crlf_message": HEAD + b"hello\r\n.dot line\r\n",
}


def on_the_wire(data: bytes) -> bytes:
    """DATA as sent: dots doubled (RFC 5321 §4.5.2), a final CRLF, then the end of data."""
    if not data.endswith(b"\n"):
        data += b"\r\n"
    lines = data.splitlines(keepends=True)
    return b"".join(b"." + x if x.startswith(b".") else x for x in lines) + b".\r\n"


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp_path = tmp_path_factory.mktemp("serve")
    settings = settings_for(tmp_path, limits=ReceiverLimits(max_message_size=65536))
    with in_process(settings) as running:
        yield running


def serve_reply(running: Running, data: bytes) -> tuple[int, str]:
    wire = Wire(running.port)
    try:
        assert (wire.reply() or "").startswith("220")
        for command in (
            "EHLO client.test",
            "MAIL FROM:<alice@sender.example>",
            "RCPT TO:<bob@example.com>",
        ):
            assert (wire.command(command) or "")[:1] in ("2",), command
        assert (wire.command("DATA") or "").startswith("354")
        wire.send(on_the_wire(data))
        reply = wire.reply() or ""
    finally:
        wire.close()
    return int(reply[:3]), reply[4:].split(" ")[0]


@pytest.mark.parametrize("data", MESSAGES.values(), ids=MESSAGES)
def test_evaluate_answers_data_as_serve(receiver: Running, tmp_path: Path, data: bytes) -> None:
    eml = tmp_path / "m.eml"
    eml.write_bytes(data)
    result = subprocess.run(
        [
            *(sys.executable, "-m", "inbound", "evaluate", "--rules", str(receiver.settings.rules)),
            *("--eml", str(eml), "--rcpt", "bob@example.com", "--max-message-size", "65536"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)["data_reply"]
    assert (reply["code"], reply["status"]) == serve_reply(receiver, data)
