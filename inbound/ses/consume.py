"""`inbound ses consume`: the Lambda handler's work for `Received` notifications in SQS (SPEC 8).

An SES receipt rule's SNS (or S3) action publishes a `Received` notification to a topic; an SQS
queue subscribed to that topic holds it until this loop takes it. Each SQS message body is
either the SNS envelope (`{"Type": "Notification", "Message": "<the notification>", ...}`) or,
when the subscription uses raw message delivery, the notification itself. The body is handed to
`inbound.ses.handler.lambda_handler` as the SNS event a subscribed Lambda would get, so the
message is read, the rules at `INBOUND_RULES` are evaluated and their actions run through
`AwsTargets` exactly as in the Lambda, with the same per-message state in S3: a notification
delivered twice runs no action twice.

**Acknowledgement.** The SQS message is deleted only after the handler succeeded. A failure
(unreadable body, missing S3 object, failing action, ...) logs `sqs.failed` with the SQS
messageId and the error's type, and leaves the message in the queue: when the visibility
timeout (`--visibility`) expires it is received again, and once it has been received
`maxReceiveCount` times the queue's redrive policy moves it to the dead-letter queue. A queue
without a redrive policy keeps retrying it until its retention period ends. SES's setup
notification (`AMAZON_SES_SETUP_NOTIFICATION`) runs nothing and is deleted. A copy of a message
that another run holds (its S3 claim, or this process running it) is neither failed nor
deleted: `sqs.busy`, and its visibility is set to the end of that claim, after which it runs
only what is left.

**Stopping.** After `max_messages` messages (succeeded, failed, ignored or busy), or when
`stop()` is called (the command calls it on SIGTERM and SIGINT): the message in hand is finished
first; messages received in the same batch but not started are made visible again at once. A
stop during a long poll takes effect when the poll returns (at most `--wait` seconds).

**A queue that cannot be read.** At the first receive, any failure (no region, no such queue,
no connection, no credentials) stops the loop with `ConsumeError`: the command is set up wrong.
Once it has received, a transient failure (network, throttling, 5xx: the AWS targets' table)
logs `sqs.receive_failed` and is retried with backoff (`retry_delay`, doubling to a minute);
a permanent one (the queue deleted, access revoked) still stops the loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoRegionError
from botocore.parsers import ResponseParserError

from inbound.core.errors import InboundError
from inbound.message.notification import DIGEST_ATTRIBUTE
from inbound.observe.log import emit
from inbound.run.ledgers import MessageBusyError
from inbound.ses.event import SesEventError, parse_event
from inbound.ses.handler import lambda_handler
from inbound.targets.aws import NO_REGION, aws_session
from inbound.targets.aws_errors import classify

log = logging.getLogger("inbound.ses.consume")

DEFAULT_WAIT = 20
DEFAULT_VISIBILITY = 300
# Backoff between receives that failed transiently, once the queue has been read.
DEFAULT_RETRY_DELAY = 1.0
MAX_RETRY_DELAY = 60.0
SQS_BATCH_MAX = 10  # receive_message's MaxNumberOfMessages ceiling
SQS_MAX_VISIBILITY = 12 * 3600  # ChangeMessageVisibility's ceiling

Handler = Callable[[object, object], dict[str, str]]


class ConsumeError(InboundError):
    """The queue cannot be read (no region, no queue, no connection): the command stops."""


@dataclass
class ConsumeStats:
    """What one run of the loop did."""

    succeeded: int = 0
    failed: int = 0
    ignored: int = 0
    # Left for later: another run of the same message was under way (a duplicate delivery).
    busy: int = 0

    @property
    def handled(self) -> int:
        return self.succeeded + self.failed + self.ignored + self.busy


class _Visibility:
    """The handler's Lambda context here: the time this consumer holds the notification (its
    visibility timeout from the receive), which is how long the message's claim may last."""

    def __init__(self, seconds: int) -> None:
        self.deadline = time.monotonic() + seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


def sns_event(
    body: str, sqs_message_id: str = "", attributes: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The SNS Lambda event for an SQS body: an SNS envelope, or a raw-delivery notification.
    The SQS message's string attributes become the SNS message's (the rule-set digest of a
    receiver of `inbound serve --spool s3://`)."""
    try:
        loaded = json.loads(body)
    except json.JSONDecodeError as exc:
        raise SesEventError(f"SQS message body is not JSON: {exc}") from None
    if not isinstance(loaded, dict):
        raise SesEventError("SQS message body is not a JSON object")
    if "notificationType" in loaded or "mail" in loaded:  # raw message delivery
        sns: dict[str, Any] = {"Type": "Notification", "Message": body}
    elif isinstance(loaded.get("Message"), str):
        kind = loaded.get("Type", "Notification")
        if kind != "Notification":
            raise SesEventError(f"SNS message of Type {kind!r}: only notifications are handled")
        sns = dict(loaded)
    else:
        raise SesEventError(
            "SQS message body is neither an SNS envelope (with a Message string) nor an SES "
            "notification (with a notificationType)"
        )
    sns.setdefault("MessageId", sqs_message_id)
    for name, value in (attributes or {}).items():
        if isinstance(value, dict) and isinstance(value.get("StringValue"), str):
            sns.setdefault("MessageAttributes", {})[name] = {
                "Type": "String",
                "Value": value["StringValue"],
            }
    return {"Records": [{"EventSource": "aws:sns", "EventVersion": "1.0", "Sns": sns}]}


class Consumer:
    """Long-poll one SQS queue and run each notification through the Lambda handler."""

    def __init__(
        self,
        queue_url: str,
        *,
        wait: int = DEFAULT_WAIT,
        visibility: int = DEFAULT_VISIBILITY,
        max_messages: int | None = None,
        sqs: Any = None,
        handle: Handler = lambda_handler,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        concurrency: int = 1,
    ) -> None:
        self.queue_url = queue_url
        self.wait = wait
        self.visibility = visibility
        self.max_messages = max_messages
        try:
            self.sqs = sqs if sqs is not None else aws_session().client("sqs")
        except NoRegionError:
            raise ConsumeError(NO_REGION) from None
        self.handle = handle
        self.retry_delay = retry_delay
        self.concurrency = concurrency
        self._stats_lock = threading.Lock()
        self.stopping = threading.Event()
        self.stats = ConsumeStats()
        self._running: set[str] = set()  # message IDs being run by this process
        self._received = False  # has a receive ever succeeded?
        self._failures = 0  # transient receive failures in a row

    def stop(self, *_: object) -> None:
        """Stop after the message in hand (usable as a signal handler)."""
        self.stopping.set()

    def _remaining(self) -> int:
        if self.max_messages is None:
            return SQS_BATCH_MAX
        return max(0, min(SQS_BATCH_MAX, self.max_messages - self.stats.handled))

    def run(self) -> ConsumeStats:
        emit(
            log,
            "sqs.consuming",
            queue=self.queue_url,
            max_messages=self.max_messages,
            concurrency=self.concurrency,
        )
        if self.concurrency > 1:
            self._run_concurrently()
        while self.concurrency == 1 and not self.stopping.is_set():
            if (count := self._remaining()) <= 0:
                break
            received = self._receive(count)
            messages: list[dict[str, Any]] = received.get("Messages", [])
            for position, message in enumerate(messages):
                if self.stopping.is_set():
                    self._release(messages[position:])
                    break
                self.consume(message)
        emit(
            log,
            "sqs.stopped",
            queue=self.queue_url,
            succeeded=self.stats.succeeded,
            failed=self.stats.failed,
            ignored=self.stats.ignored,
            busy=self.stats.busy,
        )
        return self.stats

    def _run_concurrently(self) -> None:
        """`--concurrency N`: up to N messages run at once, each in its own thread (the
        handler's run is its own); a receive asks only for as many as there are free slots,
        so no message waits in this process while its visibility timeout runs."""
        running: set[Future[None]] = set()
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="sqs-consume") as pool:
            while not self.stopping.is_set():
                free = self.concurrency - len(running)
                count = min(free, self._remaining() - len(running))
                if count <= 0:
                    if not running:
                        break
                    _, running = wait(running, return_when=FIRST_COMPLETED)
                    continue
                # With messages in hand, a short poll: their slots free up meanwhile.
                received = self._receive(count, wait=1 if running else self.wait)
                for message in received.get("Messages", []):
                    running.add(pool.submit(self.consume, message))
                running = {f for f in running if not f.done()}
            wait(running)

    def _receive(self, count: int, wait: int | None = None) -> dict[str, Any]:
        """One long poll; {} after a transient failure (once the queue has been read)."""
        try:
            received: dict[str, Any] = self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=count,
                WaitTimeSeconds=self.wait if wait is None else wait,
                VisibilityTimeout=self.visibility,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
                MessageAttributeNames=[DIGEST_ATTRIBUTE],
            )
        except ClientError as exc:  # no such queue, access denied, throttled, 5xx ...
            error = exc.response.get("Error", {})
            text = f"{error.get('Code')}: {error.get('Message')}"
            return self._receive_failed(exc, text)
        # no credentials, no connection, or an answer that is not SQS's (an HTML error page)
        except (BotoCoreError, ResponseParserError) as exc:
            return self._receive_failed(exc, str(exc))
        self._received, self._failures = True, 0
        return received

    def _receive_failed(self, exc: Exception, text: str) -> dict[str, Any]:
        failure = f"receive_message {self.queue_url}: {text}"
        if not self._received or not classify(exc).transient:
            raise ConsumeError(failure) from None
        delay = min(self.retry_delay * 2**self._failures, MAX_RETRY_DELAY)
        self._failures += 1
        emit(log, "sqs.receive_failed", level=logging.WARNING, error=failure, retry_in=delay)
        self.stopping.wait(delay)
        return {}

    def consume(self, message: dict[str, Any]) -> None:
        """Run one SQS message; delete it on success, leave it for redelivery on failure."""
        sqs_id = str(message.get("MessageId", ""))
        attributes = message.get("Attributes", {})
        receive_count = attributes.get("ApproximateReceiveCount")
        held = _Visibility(self.visibility)
        try:
            event = sns_event(
                str(message.get("Body", "")), sqs_id, message.get("MessageAttributes")
            )
            found = parse_event(event)
            if found is None:
                self._delete(message)
                self._count("ignored")
                emit(log, "sqs.setup_notification_ignored", sqs_message_id=sqs_id)
                return
            with self._own(found.message_id):
                result = self.handle(event, held)
            self._delete(message)
        except MessageBusyError as busy:
            self._later(message, busy)
            return
        except Exception as exc:  # any failure: the redrive policy decides what happens next
            self._count("failed")
            emit(
                log,
                "sqs.failed",
                level=logging.WARNING,
                sqs_message_id=sqs_id,
                error_type=type(exc).__name__,
                receive_count=receive_count,
            )
            return
        self._count("succeeded")
        emit(
            log,
            "sqs.succeeded",
            sqs_message_id=sqs_id,
            message_id=found.message_id,
            disposition=result.get("disposition"),
        )

    @contextlib.contextmanager
    def _own(self, message_id: str) -> Iterator[None]:
        """A second notification of a message this process is running is left for later at
        once (the S3 claim stops one from another process)."""
        with self._stats_lock:
            if message_id in self._running:
                raise MessageBusyError(message_id, time.time() + self.visibility)
            self._running.add(message_id)
        try:
            yield
        finally:
            with self._stats_lock:
                self._running.discard(message_id)

    def _later(self, message: dict[str, Any], busy: MessageBusyError) -> None:
        """Another run of the message is under way: this notification comes back when that
        run's claim ends (by then the run recorded its steps, and this one runs none of them,
        or it died and this one takes over); not a failure, and not deleted."""
        self._count("busy")
        wait = min(SQS_MAX_VISIBILITY, max(1, math.ceil(busy.until - time.time())))
        emit(
            log,
            "sqs.busy",
            sqs_message_id=message.get("MessageId"),
            message_id=busy.message_id,
            retry_in=wait,
        )
        try:
            self.sqs.change_message_visibility(
                QueueUrl=self.queue_url,
                ReceiptHandle=message["ReceiptHandle"],
                VisibilityTimeout=wait,
            )
        except Exception as exc:  # it comes back when its visibility timeout ends
            emit(log, "sqs.release_failed", level=logging.WARNING, error_type=type(exc).__name__)

    def _count(self, outcome: str) -> None:
        with self._stats_lock:  # `--concurrency`: several threads count
            setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)

    def _delete(self, message: dict[str, Any]) -> None:
        self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])

    def _release(self, messages: list[dict[str, Any]]) -> None:
        """Make received but unstarted messages visible again now (best effort)."""
        for message in messages:
            try:
                self.sqs.change_message_visibility(
                    QueueUrl=self.queue_url,
                    ReceiptHandle=message["ReceiptHandle"],
                    VisibilityTimeout=0,
                )
            except Exception as exc:  # they come back when their visibility timeout ends
                emit(
                    log,
                    "sqs.release_failed",
                    level=logging.WARNING,
                    sqs_message_id=message.get("MessageId"),
                    error_type=type(exc).__name__,
                )
