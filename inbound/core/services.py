"""Where actions send things: small service protocols and the `Services` that bundles them.

An action's executor reaches the outside world only through these: a blob store (S3), a topic
(SNS), a function (Lambda), a mailer (bounce DSNs) and an HTTP client (webhooks). Each is chosen
on its own: `--targets local|aws` picks the local or the AWS implementation of the first three
(both target sets post webhooks with the same HTTP client), `--relay` the mailer,
and code may mix them (`Services(blobs=AwsTargets(), functions=LocalTargets(...), ...)`: S3
on MinIO with Lambda local). In-memory fakes for tests are in `inbound.targets.memory`.

This module owns the protocols and the request types only; it must not import an
implementation. Failures are `TransientActionError` or `PermanentActionError`, decided by each
implementation from its own error codes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, slots=True)
class BounceRequest:
    """A delivery status notification to send for a message accepted earlier."""

    message_id: str
    # From: the bounce action's sender; To: the envelope sender (never <>).
    sender: str
    to: str
    recipients: tuple[str, ...]
    smtp_reply_code: str
    status_code: str
    diagnostic: str
    reporting_mta: str
    # The message's header block, for the text/rfc822-headers part (RFC 3462).
    original_headers: bytes
    # When the message was received (the DSN's Arrival-Date).
    arrival: datetime | None = None


class BlobStore(Protocol):
    async def store(
        self,
        bucket: str,
        key: str,
        content: bytes,
        *,
        kms_key_arn: str | None,
        iam_role_arn: str | None,
    ) -> None:
        """Put `content` at `key` in `bucket` (overwriting: keys are deterministic)."""

    async def url(self, bucket: str, key: str, *, expires_in: int) -> str:
        """A URL that GETs the object at `key` for `expires_in` seconds (webhook attachments)."""


class Topic(Protocol):
    async def publish(self, topic_arn: str, notification: dict[str, object]) -> None:
        """Publish one SES notification to a topic."""


class Function(Protocol):
    async def invoke(
        self, function_arn: str, event: dict[str, object], *, wait: bool
    ) -> object | None:
        """Invoke a function with the SES Lambda event; with `wait`, return what it returned."""


class Mailer(Protocol):
    async def send_bounce(self, bounce: BounceRequest) -> None:
        """Send a DSN (RFC 3464) to `bounce.to`."""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One POST (a webhook attempt): the body and headers exactly as sent."""

    url: str
    body: bytes
    headers: tuple[tuple[str, str], ...]
    # Seconds for the whole exchange: connect, send, and the answer's status and headers.
    timeout: float


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """What the server answered; redirects are never followed, so a 3xx is an answer too."""

    status: int
    reason: str
    # Header names in lower case.
    headers: Mapping[str, str]


class HttpClient(Protocol):
    async def post(self, request: HttpRequest) -> HttpResponse:
        """POST `request`; any answer is returned whatever its status. A connection that
        fails, a certificate that does not verify and a timeout raise `TransientActionError`."""


class AllServices(BlobStore, Topic, Function, Mailer, HttpClient, Protocol):
    """One object that implements every service (the local and the AWS target sets)."""


@dataclass(frozen=True, slots=True)
class Services:
    """The services an action may use, each chosen on its own."""

    blobs: BlobStore
    topics: Topic
    functions: Function
    mailer: Mailer
    http: HttpClient

    @classmethod
    def of(cls, each: AllServices, *, mailer: Mailer | None = None) -> Services:
        """Every service from one target set (`--targets`), the mailer possibly apart."""
        return cls(each, each, each, mailer if mailer is not None else each, each)
