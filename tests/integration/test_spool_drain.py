"""`inbound spool drain` against a real moto server (SPEC 7b): a local spool a real `inbound
serve` filled (its S3 action done, its SNS action failing: SNS unreachable) is handed to S3 +
SQS, and `inbound ses consume` then runs every message's remaining action exactly once; the
drain refuses while the server holds the data directory, and with S3 unreachable it fails and
keeps every message."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from inbound.ses.consume import Consumer
from tests.integration.receiver import DEADLINE, ROOT, start_child, wait_for
from tests.integration.test_aws_receive import Gate
from tests.integration.test_s3_spool import MESSAGE, count, drain, queued_id, rules_text, send
from tests.integration.test_s3_spool import setup as setup  # noqa: PLC0414 - the fixture
from tests.integration.test_ses_handler import get, keys, s3

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def spool(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`inbound spool ARGS --data-dir DIR` as a user runs it: (exit code, stdout, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "inbound", "spool", *args, "--data-dir", str(data_dir)],
        check=False,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        cwd=ROOT,
        env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)},
    )
    return done.returncode, done.stdout, done.stderr


def listing(data_dir: Path) -> dict[str, str]:
    code, out, err = spool(data_dir, "list", "--json")
    assert code == 0, err
    return {row["message_id"]: row["state"] for row in json.loads(out)}


def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


def test_drain_hands_queued_and_deferred_mail_to_s3_and_sqs_processed_once(
    setup: dict[str, str], tmp_path: Path, moto: str
) -> None:
    s = setup
    (tmp_path / "rules.yaml").write_text(rules_text(s["out"], s["topic"]))
    # The S3 action succeeds; SNS refuses connections: deferred for an hour, one step done.
    dead_sns = {"AWS_ENDPOINT_URL_SNS": f"http://127.0.0.1:{closed_port()}"}
    child = start_child(tmp_path, "--targets", "aws", "--retry-delay", "1h", env=dead_sns)
    data_dir = child.data_dir
    target = ["drain", "--spool", f"s3://{s['spool']}/in/", "--queue", s["queue"]]
    try:
        ids = [queued_id(send(child.port)[1]) for _ in range(3)]
        wait_for(
            lambda: set(listing(data_dir).values()) == {"deferred"} and len(listing(data_dir)) == 3,
            "three deferred messages",
        )
        # While the server runs it may be running these actions: refused, nothing sent.
        code, out, err = spool(data_dir, *target)
        assert code == 2, (out, err)
        assert "inbound serve is using this data directory" in err
        assert count(s["queue"]) == 0
    finally:
        child.kill()
    code, _, err = spool(data_dir, "retry", ids[0])  # due now: "queued", not deferred
    assert code == 0, err
    assert listing(data_dir) == {ids[0]: "queued", ids[1]: "deferred", ids[2]: "deferred"}

    # S3 and SQS unreachable: every message fails, stays here, and nothing is queued.
    gate = Gate(int(moto.rpartition(":")[2]))
    code, out, err = spool(
        data_dir, *target, env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{gate.port}"}
    )
    assert code == 1, (out, err)
    lines = out.splitlines()
    assert sorted(line.split(":")[0] for line in lines[:-1]) == sorted(ids)
    assert all("not drained" in line for line in lines[:-1]), out
    assert lines[-1] == "0 drained, 3 failed"
    assert len(listing(data_dir)) == 3
    assert count(s["queue"]) == 0
    assert [k for k in keys(s["spool"]) if not k.startswith("in/rules/")] == []

    code, out, err = spool(data_dir, *target, "--concurrency", "0")
    assert (code, out) == (2, ""), err
    assert "--concurrency 0: expected 1 to 64" in err

    code, out, err = spool(data_dir, *target)  # all three at once (--concurrency 8)
    assert code == 0, (out, err)
    assert f"{ids[0]}: drained (queued, 1 finished step carried)" in out
    assert f"{ids[1]}: drained (deferred, 1 finished step carried)" in out
    assert out.splitlines()[-1] == "3 drained, 0 failed"
    assert listing(data_dir) == {}  # the local queue is empty
    for message_id in ids:
        stored = get(s["spool"], f"in/{message_id}")
        # As `serve --spool s3://` stores it: the prepended headers, then the message.
        assert stored.startswith(b"Return-Path: <alice@sender.example>\r\nReceived: from ")
        assert stored.endswith(MESSAGE)

    stats = Consumer(s["queue"], wait=1, max_messages=3).run()
    assert (stats.succeeded, stats.failed) == (3, 0)
    assert count(s["queue"]) == 0
    # Each action once: the S3 copy the local server made (not made again), one SNS each.
    versions = s3().list_object_versions(Bucket=s["out"])["Versions"]
    assert sorted(v["Key"] for v in versions) == sorted(f"kept/{i}" for i in ids)
    published = [m["Body"] for m in drain(s["topic_queue"])]
    assert sorted(i for i in ids for body in published if i in body) == sorted(ids)
