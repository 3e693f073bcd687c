"""The checks of `bench/cluster.py`, made after each phase was measured (their requests to moto
are not in the figures): every message that got a 250 is in the spool once, with `Received-SPF:
pass` (a sample) and one notification in the queue; after the consumers, each is stored once
(one object version of the S3 action) and published once (the SNS action's topic, through the
queue subscribed to it), and the queue is empty. What moto's SQS did on its own (it takes no
lock in ReceiveMessage and DeleteMessage: a notification delivered twice, a delete lost) is
reported as a note; an action run twice is a failure whatever the cause.
"""

from __future__ import annotations

import json
from collections import Counter

from cluster_lab import Lab, Resources
from cluster_report import Row

SAMPLE = 20  # stored copies whose headers are checked


def check_spool(lab: Lab, res: Resources, accepted: set[str], row: Row) -> None:
    """After the receive phase: the spool and the queue hold what the receivers accepted."""
    stored = spool_ids(lab, res)
    if stored != accepted:
        row.failures.append(f"{len(stored)} messages in the spool, {len(accepted)} accepted")
    # The zone makes SPF pass: a sample of the stored copies says so (the checks ran for real).
    s3 = lab.client("s3")
    for message_id in sorted(stored)[:SAMPLE]:
        head = s3.get_object(Bucket=res.spool, Key=f"in/{message_id}", Range="bytes=0-4095")
        if b"\r\nReceived-SPF: pass " not in head["Body"].read():
            row.failures.append(f"in/{message_id} has no Received-SPF: pass")
            break
    queued = queue_depth(lab, res.queue)
    if queued != len(accepted):
        row.failures.append(f"{queued} notifications queued for {len(accepted)} messages")


def spool_ids(lab: Lab, res: Resources) -> set[str]:
    found: set[str] = set()
    for page in (
        lab.client("s3").get_paginator("list_objects_v2").paginate(Bucket=res.spool, Prefix="in/")
    ):
        found.update(o["Key"][3:] for o in page.get("Contents", []))
    return {key for key in found if not key.startswith("rules/")}


def queue_depth(lab: Lab, url: str) -> int:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    got = lab.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=names)
    return sum(int(v) for v in got["Attributes"].values())


def check_actions(
    lab: Lab, res: Resources, accepted: set[str], handled: Counter[str], row: Row
) -> None:
    """Every accepted message stored once (one object version) and published once; nothing
    else; the queue empty. But for what moto's SQS did on its own, reported as notes: moto
    takes no lock in ReceiveMessage and DeleteMessage, so two consumers receiving at once can
    both get one message (the S3 ledger's claim must still run its actions once: a second run
    is a failure), and a delete can be lost."""
    versions: Counter[str] = Counter()
    for page in lab.client("s3").get_paginator("list_object_versions").paginate(Bucket=res.out):
        versions.update(v["Key"].removeprefix("kept/") for v in page.get("Versions", []))
    published: Counter[str] = Counter()
    sqs = lab.client("sqs")
    # Deleted as read: moto's ReceiveMessage grows slower with every message left in flight.
    while batch := sqs.receive_message(
        QueueUrl=res.topic_queue, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=600
    ).get("Messages", []):
        for message in batch:
            notification = json.loads(json.loads(message["Body"])["Message"])
            published[notification["mail"]["messageId"]] += 1
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)]
        sqs.delete_message_batch(QueueUrl=res.topic_queue, Entries=entries)
    if twice := sum(1 for count in handled.values() if count > 1):
        # moto's ReceiveMessage takes no lock: two consumers can get one notification. The
        # S3 ledger's claim must still have run each action once (checked below).
        row.notes.append(
            f"moto's SQS delivered {twice} notification(s) twice; the S3 ledger's claim ran "
            f"their actions once"
        )
    once = Counter(dict.fromkeys(accepted, 1))
    if versions != once:
        row.failures.append(
            f"S3 action: {sum(versions.values())} versions of {len(versions)} keys "
            f"for {len(accepted)} messages"
        )
    if published != once:
        row.failures.append(
            f"SNS action: {sum(published.values())} notifications of {len(published)} "
            f"messages for {len(accepted)}"
        )
    if (left := queue_depth(lab, res.queue)) != 0:
        if sum(handled.values()) >= len(accepted) == len(handled):
            # Each was deleted (inbound logs sqs.succeeded only once the delete succeeded).
            row.notes.append(
                f"moto's SQS kept {left} notification(s) whose DeleteMessage it had answered "
                f"with success (its queue is a list rebuilt without a lock on each delete)"
            )
        else:
            row.failures.append(f"{left} notifications left in the queue")
