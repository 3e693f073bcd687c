"""Issue 11, item 8, through the real receiver: an SNS action to a local topic whose append
meets a full disk (a real one: a small tmpfs as the data directory) is retried once there is
room, and the topic file then holds whole JSON lines, the notification exactly once."""

from __future__ import annotations

import json
import signal
import smtplib
from pathlib import Path

import pytest

from tests.integration.receiver import DEADLINE, Child, events_of, start_child, wait_for
from tests.tmpfs import fill, small_tmpfs

RULES = """\
version: 1
name: full-disk
domains: [example.com]
rules:
  - name: notify
    recipients: [notify@example.com]
    actions:
      - {type: sns, topic_arn: "arn:aws:sns:us-east-1:123456789012:inbound"}
"""
LINE = "The quick brown fox jumps over the lazy dog; the dog does not mind it at all.\r\n"
# Under SNS's 150 KB with headers; its notification makes a line of about 125 KB.
MESSAGE = f"Subject: large\r\n\r\n{LINE * 1500}".encode()
# What the spool takes for it in tmpfs pages (message.eml, meta.json, state.json), at most.
SPOOLED = len(MESSAGE) + 16 * 1024


def send(child: Child) -> str:
    with smtplib.SMTP("127.0.0.1", child.port, timeout=DEADLINE) as client:
        client.ehlo("client.test")
        assert client.mail("alice@sender.example")[0] == 250
        assert client.rcpt("notify@example.com")[0] == 250
        code, text = client.data(MESSAGE)
    assert code == 250, text
    return text.decode().rsplit(" ", 1)[1]


@pytest.mark.integration
def test_an_sns_append_cut_by_a_full_disk_leaves_whole_lines(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    with small_tmpfs(tmp_path / "data", 4 * 1024 * 1024) as data:
        child = start_child(tmp_path, "--retry-delay", "0.2s", "--max-retry-delay", "0.2s")
        try:
            # Room for the spool's copy and for a part of the notification's line only.
            filler = fill(data, leave=SPOOLED + 32 * 1024)
            message_id = send(child)
            [failed, *_] = wait_for(
                lambda: events_of(child, "action.failed", message_id), "a failed append"
            )
            assert failed["action"] == "SNS"
            assert "No space left on device" in failed["error"], failed
            filler.unlink()
            wait_for(lambda: events_of(child, "message.dispatched", message_id), "the retry")
            child.signal(signal.SIGTERM)
            assert child.process.wait(DEADLINE) == 0, child.log.read_text()
        finally:
            if child.process.poll() is None:
                child.kill()
        topic = (data / "sns" / "inbound.jsonl").read_bytes()
    assert topic.endswith(b"\n"), "the file ends in a partial line"
    envelopes = [json.loads(line) for line in topic.decode().split("\n")[:-1]]
    notifications = [json.loads(envelope["Message"]) for envelope in envelopes]
    assert [n["mail"]["messageId"] for n in notifications] == [message_id]
    assert notifications[0]["content"].endswith(MESSAGE.decode())  # after the headers added
