"""SPEC 7b end to end against a real moto server: three receivers of `inbound serve --spool
s3://` and two `inbound ses consume --concurrency 3` processes on loopback, messages over ten
connections spread across the receivers, one receiver and one consumer SIGKILLed mid-run and
started again. Every message that got a 250 has its actions done exactly once (S3 object
versions and SNS notifications counted) but for those the killed consumer had in hand (the S3
ledger's at-least-once window), no refused one has any, and the queue ends empty."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.integration.receiver import ROOT, Child, start_child, wait_for
from tests.integration.test_s3_spool import MESSAGE, count, drain, queued_id, send, setup
from tests.integration.test_ses_handler import get, s3

pytestmark = [pytest.mark.integration]
__all__ = ["setup"]  # the fixture, shared

# The issue asks for 1,000 (INBOUND_CLUSTER_MESSAGES=1000); a few hundred keep the suite short.
CLUSTER_MESSAGES = int(os.environ.get("INBOUND_CLUSTER_MESSAGES", "200"))
CONCURRENCY = 3
PATIENCE = 240 + CLUSTER_MESSAGES / 5  # seconds, on two shared cores
SENDERS = 10


def start_consumer(tmp_path: Path, queue_url: str, name: str) -> subprocess.Popen[bytes]:
    log = (tmp_path / f"{name}-{time.monotonic_ns()}.log").open("wb")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["--queue", queue_url, "--named-rules-only", "--wait", "1", "--visibility", "30"]
    command = [
        sys.executable,
        "-m",
        "inbound",
        "ses",
        "consume",
        *args,
        "--concurrency",
        str(CONCURRENCY),
    ]
    with log:  # the child has its own descriptor
        return subprocess.Popen(command, stdout=log, stderr=log, env=env)


@pytest.mark.timeout(300 + 2 * PATIENCE)
def test_a_cluster_survives_a_receiver_and_a_consumer_killed(
    setup: dict[str, str], tmp_path: Path
) -> None:
    s = setup
    spool = f"s3://{s['spool']}/in/"

    def receiver(index: int, port: int = 0) -> Child:
        home = tmp_path / f"r{index}"
        home.mkdir(exist_ok=True)
        (home / "rules.yaml").write_text(s["rules"])
        return start_child(home, "--spool", spool, "--queue", s["queue"], port=port)

    receivers = [receiver(i) for i in range(3)]
    consumers = [start_consumer(tmp_path, s["queue"], f"c{i}") for i in range(2)]
    replies: dict[str, tuple[int, str]] = {}  # token: (code, text); code 0: no reply
    sent = threading.Semaphore(0)

    def sender(worker: int) -> None:
        for n in range(worker, CLUSTER_MESSAGES, SENDERS):
            token = f"m{n:04d}"
            message = MESSAGE.replace(b"spooled in S3", token.encode())
            port = receivers[n % 3].port
            try:
                replies[token] = send(port, message)
            except (OSError, smtplib.SMTPException) as exc:
                replies[token] = (0, type(exc).__name__)
            sent.release()

    threads = [threading.Thread(target=sender, args=(w,)) for w in range(SENDERS)]
    try:
        for thread in threads:
            thread.start()
        for _ in range(CLUSTER_MESSAGES // 3):
            sent.acquire(timeout=60)
        receivers[0].kill()
        consumers[0].kill()
        consumers[0].wait(20)
        receivers[0] = receiver(0, port=receivers[0].port)
        consumers[0] = start_consumer(tmp_path, s["queue"], "c0-again")
        for thread in threads:
            thread.join(PATIENCE)
        wait_for(lambda: count(s["queue"]) == 0, "an empty queue", deadline=PATIENCE)
    finally:
        for child in receivers:
            child.kill()
        for process in consumers:
            process.kill()
            process.wait(20)

    accepted = {t: queued_id(text) for t, (code, text) in replies.items() if code == 250}
    refused = {t for t, (code, _) in replies.items() if code not in {0, 250}}
    assert len(accepted) > CLUSTER_MESSAGES // 2, replies  # receiver 0 is down a while
    versions = s3().list_object_versions(Bucket=s["out"]).get("Versions", [])
    kept: dict[str, int] = {}
    for version in versions:
        kept[version["Key"]] = kept.get(version["Key"], 0) + 1
    published: dict[str, int] = {}
    for message in drain(s["topic_queue"]):
        notification = json.loads(json.loads(message["Body"])["Message"])
        message_id = notification["mail"]["messageId"]
        published[message_id] = published.get(message_id, 0) + 1
    for message_id in accepted.values():
        assert kept.get(f"kept/{message_id}", 0) >= 1, message_id
        assert published.get(message_id, 0) >= 1, message_id
    # Exactly once, but for the ledger's one window: a consumer killed after an action
    # succeeded and before the S3 ledger recorded it runs that action again (at least once,
    # README). Only the messages the killed consumer had in hand (--concurrency 3) can.
    repeated = [i for i in accepted.values() if kept[f"kept/{i}"] + published[i] > 2]
    unreplied = sum(1 for code, _ in replies.values() if code == 0)
    print(  # for a run with -s: what the kills did
        f"cluster: {len(accepted)} got 250, {len(refused)} refused, {unreplied} no reply;"
        f" {len(kept)} stored by the S3 action, {sum(published.values())} SNS notifications;"
        f" actions repeated for {len(repeated)} message(s) {repeated}"
    )
    assert len(repeated) <= CONCURRENCY, repeated
    # Nothing else ran but what got no reply at all (a receiver killed in the middle).
    assert len(kept) - len(accepted) <= unreplied
    for token in refused:
        assert not any(token.encode() in get(s["out"], key) for key in kept), token
