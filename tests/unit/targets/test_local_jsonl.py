"""The local targets' JSON-lines files hold whole lines only (issue 11, item 8): an append cut
short by a full disk is undone, and a partial line a crash left is cut before the next append.
The full disk is a real one: a small tmpfs (tests/tmpfs.py; root needed)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from inbound.core.errors import TransientActionError
from inbound.targets.local import LocalTargets
from tests.tmpfs import fill, small_tmpfs

TOPIC = "arn:aws:sns:us-east-1:123456789012:inbound"
FUNCTION = "arn:aws:lambda:us-east-1:123456789012:function:record"
LARGE = 300 * 1024


def publish(targets: LocalTargets, notification: dict[str, object]) -> None:
    asyncio.run(targets.publish(TOPIC, notification))


def records(path: Path) -> list[dict[str, object]]:
    """Every line of a JSON-lines file, parsed: a line that is not JSON fails the test."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), f"{path.name} ends in a partial line"
    return [json.loads(line) for line in data.decode().split("\n")[:-1]]


def messages(path: Path) -> list[dict[str, object]]:
    """The notifications in an SNS topic file (each envelope's Message)."""
    return [json.loads(str(envelope["Message"])) for envelope in records(path)]


def whole_line(n: int) -> bytes:
    return json.dumps({"Type": "Notification", "Message": json.dumps({"n": n})}).encode() + b"\n"


@pytest.mark.parametrize(
    "left",
    [b'{"Type": "Notification", "Message": "{\\"n\\": ', b"x" * 200_000],
    ids=["short", "longer-than-a-read"],
)
def test_a_partial_line_left_by_a_crash_is_cut_before_the_next_append(
    tmp_path: Path, left: bytes
) -> None:
    topic = tmp_path / "sns" / "inbound.jsonl"
    topic.parent.mkdir()
    topic.write_bytes(whole_line(0) + whole_line(1) + left)
    publish(LocalTargets(tmp_path), {"n": 2})
    assert messages(topic) == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_a_file_of_only_a_partial_line_is_emptied_before_the_append(tmp_path: Path) -> None:
    events = tmp_path / "lambda" / "record.jsonl"
    events.parent.mkdir()
    events.write_bytes(b'{"Records": [')
    asyncio.run(LocalTargets(tmp_path).invoke(FUNCTION, {"n": 1}, wait=False))
    assert records(events) == [{"n": 1}]


def test_an_append_cut_by_a_full_disk_is_undone_and_the_retry_is_whole(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "fs", 2 * 1024 * 1024) as fs:
        targets = LocalTargets(fs / "data")
        publish(targets, {"n": 0})
        topic = fs / "data" / "sns" / "inbound.jsonl"
        before = topic.read_bytes()
        filler = fill(fs, leave=64 * 1024)  # room for part of the large record only
        large = {"n": 1, "content": "x" * LARGE}

        with pytest.raises(TransientActionError, match="No space left on device"):
            publish(targets, large)
        assert topic.read_bytes() == before  # the part written was taken back

        filler.unlink()
        publish(targets, large)  # the dispatcher's retry
        publish(targets, {"n": 2})
        assert messages(topic) == [{"n": 0}, large, {"n": 2}]
