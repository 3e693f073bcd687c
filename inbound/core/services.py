"""Where actions send things: small service protocols and the `Services` that bundles them.

An action's executor reaches the outside world only through these: a blob store (S3), a topic
(SNS), a function (Lambda), a mailer (bounce DSNs), an HTTP client (webhooks) and an outbound
path for whole messages (forwards, and the bounces relayed back through SRS). Each is chosen on
its own: `--targets local|aws` picks the local or the AWS implementation of the first three
(both target sets post webhooks with the same HTTP client), `--relay` the mailer and the
outbound path (without it, the local outbox), and code may mix them
(`Services(blobs=AwsTargets(), functions=LocalTargets(...), ...)`: S3 on MinIO with Lambda
local). In-memory fakes for tests are in `inbound.targets.memory`.

This module owns the protocols and the request types only; it must not import an
implementation (`NoOutbound`, the default where there is no outbound path, only refuses).
Failures are `TransientActionError` or `PermanentActionError`, decided by each implementation
from its own error codes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from inbound.core.errors import PermanentActionError


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
        content_type: str = "message/rfc822",
    ) -> None:
        """Put `content` at `key` in `bucket` (overwriting: keys are deterministic), served
        as `content_type` (a message unless said otherwise)."""

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


@dataclass(frozen=True, slots=True)
class OutboundMail:
    """One whole message to send as it is, with its own envelope."""

    # The reverse path; "" is the null sender <> (a relayed bounce).
    mail_from: str
    rcpt_to: tuple[str, ...]
    content: bytes
    # The spooled message this one comes from, and which of its sends it is (the local
    # outbox's file name; the same on every retry).
    message_id: str
    index: int


class Outbound(Protocol):
    """Whole messages out: `--relay` (SMTP), the local outbox, or a fake. Failures are
    `TransientActionError` / `PermanentActionError` with the relay's reply in the reason."""

    async def send(self, mail: OutboundMail) -> None:
        """Hand `mail` to the next hop, every recipient or none (a refused recipient fails
        the whole send, so a retry never sends twice to the ones that were accepted)."""

    async def max_size(self) -> int | None:
        """The largest message the next hop takes (the relay's SIZE, RFC 1870), None if it
        announces none."""


class NoOutbound:
    """The outbound path where there is none (the Lambda handler): every send fails for good."""

    async def send(self, mail: OutboundMail) -> None:
        raise PermanentActionError("no outbound mail path here (--relay, or via: ses)")

    async def max_size(self) -> int | None:
        return None


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
    outbound: Outbound = field(default_factory=NoOutbound)
    # `forward` with `via: ses`: SES SendEmail (`--targets aws`, the Lambda handler), or the
    # local outbox with `--targets local`.
    ses_outbound: Outbound = field(default_factory=NoOutbound)

    @classmethod
    def of(
        cls,
        each: AllServices,
        *,
        mailer: Mailer | None = None,
        outbound: Outbound | None = None,
        ses_outbound: Outbound | None = None,
    ) -> Services:
        """Every service from one target set (`--targets`), the mailer and the outbound path
        possibly apart."""
        return cls(
            each,
            each,
            each,
            mailer if mailer is not None else each,
            each,
            outbound if outbound is not None else NoOutbound(),
            ses_outbound if ses_outbound is not None else NoOutbound(),
        )
