"""Two runs of one message at the same time (SQS delivers a notification twice, Lambda retries
an invocation while the first still runs), against a real moto server: the S3 ledger's claim
lets one run and leaves the other for later, which then runs nothing twice (SPEC section 8:
"Running the same event twice runs no action twice"); a run whose claim ran out and was taken
over records nothing more."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from inbound.core.steps import StepKey, StepRecord
from inbound.message.notification import DIGEST_ATTRIBUTE
from inbound.run.ledgers import ClaimLostError, MessageBusyError, S3Ledger
from inbound.ses.consume import Consumer
from inbound.ses.handler import DEFAULT_STATE_PREFIX
from tests.integration.test_s3_spool import count, drain, queued_id, send, serve
from tests.integration.test_s3_spool import setup as setup  # noqa: PLC0414 - the fixture
from tests.integration.test_ses_consume import sqs
from tests.integration.test_ses_handler import s3

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def received(s: dict[str, str], tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """One message through `inbound serve --spool s3://`: its ID and its notification."""
    child = serve(tmp_path, s["rules"], f"s3://{s['spool']}/in/", s["queue"])
    try:
        code, text = send(child.port)
    finally:
        child.kill()
    assert code == 250, text
    (notice,) = sqs().receive_message(
        QueueUrl=s["queue"], MessageAttributeNames=["All"], VisibilityTimeout=0
    )["Messages"]
    return queued_id(text), notice


def again(s: dict[str, str], notice: dict[str, Any]) -> None:
    """The same notification once more in the queue, as SQS's duplicate delivery is."""
    digest = notice["MessageAttributes"][DIGEST_ATTRIBUTE]["StringValue"]
    sqs().send_message(
        QueueUrl=s["queue"],
        MessageBody=notice["Body"],
        MessageAttributes={DIGEST_ATTRIBUTE: {"DataType": "String", "StringValue": digest}},
    )


def state_key(message_id: str) -> str:
    """Where the handler keeps a message's ledger (the `aws` fixture sets a prefix per test)."""
    return os.environ.get("INBOUND_SES_STATE_PREFIX", DEFAULT_STATE_PREFIX) + f"{message_id}.json"


def ledger(s: dict[str, str], message_id: str) -> S3Ledger:
    return S3Ledger.load(s3(), s["spool"], state_key(message_id), message_id)


def actions_done(s: dict[str, str]) -> tuple[int, int]:
    """(S3 object versions stored by the S3 action, SNS notifications published)."""
    versions = s3().list_object_versions(Bucket=s["out"]).get("Versions", [])
    return len(versions), len(drain(s["topic_queue"]))


def test_a_run_under_way_elsewhere_leaves_the_notification_for_later(
    setup: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = setup
    message_id, _ = received(s, tmp_path)
    other = ledger(s, message_id)
    other.claim(3)  # another consumer's run of this message, under way for 3 s more

    caplog.set_level("INFO", logger="inbound")
    stats = Consumer(s["queue"], wait=1, max_messages=1).run()
    assert (stats.succeeded, stats.failed, stats.busy) == (0, 0, 1)
    assert actions_done(s) == (0, 0)  # nothing ran beside the other run
    (busy,) = [r for r in caplog.records if getattr(r, "event", None) == "sqs.busy"]
    assert busy.__dict__["fields"]["message_id"] == message_id
    assert count(s["queue"]) == 1  # not deleted: it comes back when the claim ends

    # The other run did the S3 action, then died: its claim runs out, this one takes over
    # and runs only what is left.
    other.put(StepKey(0, 0), StepRecord("succeeded", 1, None, None))
    asyncio.run(other.flush())
    stats = Consumer(s["queue"], wait=10, max_messages=1).run()
    assert (stats.succeeded, stats.busy) == (1, 0)
    assert actions_done(s) == (0, 1)  # the SNS action only
    assert count(s["queue"]) == 0
    stored = s3().get_object(Bucket=s["spool"], Key=state_key(message_id))["Body"].read()
    assert "claim" not in json.loads(stored)  # released: a later copy need not wait


def test_two_copies_in_one_consumer_run_the_actions_once(
    setup: dict[str, str], tmp_path: Path
) -> None:
    s = setup
    _, notice = received(s, tmp_path)
    again(s, notice)  # the queue holds it twice now
    stats = Consumer(s["queue"], wait=1, visibility=2, max_messages=2, concurrency=2).run()
    assert stats.handled == 2
    # Either both ran one after the other, or one found the other under way: once each.
    stats = Consumer(s["queue"], wait=5, max_messages=stats.busy).run() if stats.busy else stats
    assert count(s["queue"]) == 0
    assert actions_done(s) == (1, 1)


def test_a_run_whose_claim_was_taken_over_records_nothing_more(setup: dict[str, str]) -> None:
    s = setup
    first = ledger(s, "m-claims")
    first.claim(60, now=time.time() - 120)  # a run that outlived its claim
    second = ledger(s, "m-claims")
    second.claim(60)
    with pytest.raises(MessageBusyError):
        ledger(s, "m-claims").claim(60)  # a third, while the second holds it
    first.put(StepKey(0, 0), StepRecord("succeeded", 1, None, None))
    with pytest.raises(ClaimLostError):
        asyncio.run(first.flush())
    assert ledger(s, "m-claims").steps == {}  # the second run decides what is left
    second.put(StepKey(0, 1), StepRecord("succeeded", 1, None, None))
    second.release()
    asyncio.run(second.flush())
    after = ledger(s, "m-claims")
    assert (list(after.steps), after.claim_of) == (["0:1"], None)
