"""`inbound ses consume` against a real moto server: Received notifications in SQS (SNS envelope
and raw delivery) run the rules like the Lambda handler; the SQS message is deleted only after
success, comes back after its visibility timeout on failure, and ends in the dead-letter queue
after maxReceiveCount."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from inbound.cli.main import main
from inbound.ses.consume import Consumer, sns_event
from inbound.ses.handler import SesEventError
from tests.integration.test_aws_receive import Gate
from tests.integration.test_ses_handler import (
    RAW,
    S3_NOTIFICATION,
    bucket,
    get,
    keys,
    s3,
    store_rules,
    unique,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def sqs() -> Any:
    return boto3.client("sqs")


def queue(**attributes: str) -> str:
    url: str = sqs().create_queue(QueueName=unique("queue"), Attributes=attributes)["QueueUrl"]
    return url


def queue_with_dlq() -> tuple[str, str]:
    dlq = queue()
    arn = sqs().get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    policy = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": "1"})
    return queue(RedrivePolicy=policy), dlq


def envelope(notification: dict[str, Any]) -> str:
    """The body SQS holds for an SNS subscription without raw delivery."""
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": str(uuid.uuid4()),
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:inbound",
            "Subject": "Amazon SES Email Receipt Notification",
            "Message": json.dumps(notification),
            "Timestamp": "2026-01-01T00:00:00.000Z",
        }
    )


def send(url: str, body: str) -> None:
    sqs().send_message(QueueUrl=url, MessageBody=body)


def receive(url: str, wait: int = 0) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = (
        sqs()
        .receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=wait,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        .get("Messages", [])
    )
    return found


def stored_notification(*, store: bool = True) -> dict[str, Any]:
    """A Received notification of an S3 action, its message stored in S3 (unless not `store`)."""
    notification: dict[str, Any] = json.loads(S3_NOTIFICATION.read_text())
    notification["mail"]["messageId"] = unique("msg")
    action = notification["receipt"]["action"]
    action["bucketName"] = bucket()
    action["objectKey"] = "incoming/" + notification["mail"]["messageId"]
    if store:
        s3().put_object(Bucket=action["bucketName"], Key=action["objectKey"], Body=RAW)
    return notification


def rules_file(tmp_path: Path, *, versioned: bool = False) -> tuple[str, Path]:
    """A rule set that stores every message in a new bucket under `out/`."""
    out = bucket(versioned=versioned)
    path = tmp_path / f"{unique('rules')}.yaml"
    path.write_text(store_rules(["example.com"], out))
    return out, path


def with_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, versioned: bool = False) -> str:
    out, path = rules_file(tmp_path, versioned=versioned)
    monkeypatch.setenv("INBOUND_RULES", str(path))
    return out


@pytest.mark.parametrize("raw_delivery", [False, True], ids=["sns-envelope", "raw"])
def test_notification_runs_the_rules_and_is_deleted(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raw_delivery: bool
) -> None:
    out = with_rules(tmp_path, monkeypatch)
    notification = stored_notification()
    url = queue()
    send(url, json.dumps(notification) if raw_delivery else envelope(notification))

    stats = Consumer(url, wait=1, visibility=1, max_messages=1).run()

    assert (stats.succeeded, stats.failed, stats.ignored) == (1, 0, 0)
    assert get(out, f"out/{notification['mail']['messageId']}") == RAW
    time.sleep(1.2)  # past the visibility timeout: a message left in the queue would show
    assert receive(url) == []


def test_duplicate_notification_runs_nothing_twice(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = with_rules(tmp_path, monkeypatch, versioned=True)
    notification = stored_notification()
    url = queue()
    send(url, envelope(notification))
    send(url, json.dumps(notification))

    stats = Consumer(url, wait=1, max_messages=2).run()

    assert stats.succeeded == 2
    versions = s3().list_object_versions(Bucket=out).get("Versions", [])
    assert [v["Key"] for v in versions] == [f"out/{notification['mail']['messageId']}"]


def test_failure_leaves_the_message_for_redelivery(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    out = with_rules(tmp_path, monkeypatch)
    notification = stored_notification(store=False)  # the S3 object is missing
    url = queue()
    send(url, envelope(notification))

    with caplog.at_level("INFO", logger="inbound"):
        stats = Consumer(url, wait=1, visibility=1, max_messages=1).run()

    assert (stats.succeeded, stats.failed) == (0, 1)
    assert keys(out) == []
    failed = [r for r in caplog.records if getattr(r, "event", None) == "sqs.failed"]
    assert len(failed) == 1
    fields = failed[0].fields  # type: ignore[attr-defined]
    assert fields["error_type"] == "SesMessageError"
    assert fields["sqs_message_id"]
    assert receive(url) == []  # hidden for the visibility timeout
    again = receive(url, wait=3)  # and then visible again
    assert len(again) == 1
    assert again[0]["MessageId"] == fields["sqs_message_id"]
    assert again[0]["Attributes"]["ApproximateReceiveCount"] == "2"


def test_failure_ends_in_the_dead_letter_queue(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_rules(tmp_path, monkeypatch)
    url, dlq = queue_with_dlq()
    send(url, envelope(stored_notification(store=False)))

    assert Consumer(url, wait=1, visibility=1, max_messages=1).run().failed == 1
    time.sleep(1.2)

    assert receive(url, wait=1) == []  # maxReceiveCount 1: moved instead of delivered again
    moved = receive(dlq, wait=1)
    assert len(moved) == 1
    assert json.loads(json.loads(moved[0]["Body"])["Message"])["notificationType"] == "Received"


@pytest.mark.parametrize("raw_delivery", [False, True], ids=["sns-envelope", "raw"])
def test_setup_notification_is_deleted_without_running_anything(
    aws: str, raw_delivery: bool
) -> None:
    # No INBOUND_RULES: the handler must not be called at all.
    setup = {"notificationType": "AMAZON_SES_SETUP_NOTIFICATION"}
    url = queue()
    send(url, json.dumps(setup) if raw_delivery else envelope(setup))
    calls: list[object] = []

    def handle(event: object, context: object) -> dict[str, str]:
        calls.append(event)
        return {"disposition": "CONTINUE"}

    stats = Consumer(url, wait=1, visibility=1, max_messages=1, handle=handle).run()

    assert (stats.ignored, stats.failed, calls) == (1, 0, [])
    time.sleep(1.2)
    assert receive(url) == []


@pytest.fixture
def logger_state() -> Iterator[None]:
    """The command configures the `inbound` logger (JSON on stderr): put it back afterwards."""
    root = logging.getLogger("inbound")
    saved = (root.handlers[:], root.level, root.propagate)
    yield
    root.handlers[:], root.level, root.propagate = saved


def test_stop_finishes_the_message_in_hand_and_releases_the_rest(aws: str) -> None:
    url = queue()
    for number in range(3):
        send(url, json.dumps(dict(json.loads(S3_NOTIFICATION.read_text()), n=number)))
    handled: list[object] = []

    def handle(event: object, context: object) -> dict[str, str]:
        handled.append(event)
        consumer.stop()  # as SIGTERM would, while this message is in hand
        return {"disposition": "CONTINUE"}

    consumer = Consumer(url, wait=1, visibility=30, handle=handle)
    # Three in one batch (moto returns them together): one is run, two released.
    stats = consumer.run()

    assert (len(handled), stats.succeeded) == (1, 1)
    assert len(receive(url, wait=1)) == 2  # visible at once, not after 30 seconds


def test_stop_during_a_long_poll(aws: str) -> None:
    consumer = Consumer(queue(), wait=1)
    threading.Timer(0.3, consumer.stop).start()
    started = time.monotonic()
    assert consumer.run().handled == 0
    assert time.monotonic() - started < 5


@pytest.mark.usefixtures("logger_state")
def test_cli_max_messages_stops_the_loop(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, rules = rules_file(tmp_path)
    # The command sets INBOUND_RULES from --rules (for the handler): monkeypatch restores it.
    monkeypatch.setenv("INBOUND_RULES", "")
    url = queue()
    for _ in range(3):
        send(url, envelope(stored_notification()))

    args = ["ses", "consume", "--queue", url, "--wait", "1", "--max-messages", "2"]
    code = main([*args, "--rules", str(rules)])

    assert code == 0
    assert len(keys(out, "out/")) == 2
    left = receive(url, wait=1)
    assert len(left) == 1


@pytest.mark.usefixtures("logger_state")
def test_cli_without_rules_is_refused(aws: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ses", "consume", "--queue", queue(), "--wait", "0"]) == 2
    assert "INBOUND_RULES" in capsys.readouterr().err


@pytest.mark.usefixtures("logger_state")
def test_cli_with_a_queue_that_does_not_exist_says_so(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, rules = rules_file(tmp_path)
    monkeypatch.setenv("INBOUND_RULES", "")
    gone = queue().rsplit("/", 1)[0] + "/" + unique("no-such-queue")
    assert main(["ses", "consume", "--queue", gone, "--wait", "0", "--rules", str(rules)]) == 2
    err = capsys.readouterr().err
    assert f"inbound ses: receive_message {gone}: " in err
    assert "queue does not exist" in err


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[]",
        json.dumps({"Type": "SubscriptionConfirmation", "Message": "confirm"}),
        json.dumps({"something": "else"}),
    ],
)
def test_unusable_bodies_are_refused(body: str) -> None:
    with pytest.raises(SesEventError):
        sns_event(body)


def test_a_queue_unreachable_for_a_while_is_polled_again_with_backoff(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer that has read its queue keeps going through a network outage."""
    out = with_rules(tmp_path, monkeypatch)
    url = queue()
    gate = Gate(int(aws.rsplit(":", 1)[1]))  # SQS through a port we can close
    gate.open()
    through_gate = boto3.client(
        "sqs",
        endpoint_url=f"http://127.0.0.1:{gate.port}",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
    )
    first, second = stored_notification(), stored_notification()
    send(url, envelope(first))
    consumer = Consumer(url, wait=0, max_messages=2, sqs=through_gate, retry_delay=0.05)
    running = threading.Thread(target=consumer.run, daemon=True)
    running.start()
    try:
        wait_until(lambda: consumer.stats.succeeded == 1, "the first message")
        gate.close()
        wait_until(lambda: consumer._failures >= 3, "three failed polls")
        send(url, envelope(second))
        gate.open()
        running.join(30)
        assert not running.is_alive(), "the consumer did not take the second message"
    finally:
        consumer.stop()
        gate.close()
    assert (consumer.stats.succeeded, consumer.stats.failed) == (2, 0)
    assert get(out, f"out/{second['mail']['messageId']}") == RAW


def wait_until(check: Callable[[], bool], what: str, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)
