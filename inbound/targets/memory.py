"""In-memory services for tests, shipped with the package (as httpx ships `MockTransport`).

`MemoryServices()` gives one fake per service protocol of `inbound.core.services`, each keeping
what it was asked in plain lists and dicts, and `services` bundles them for the runner:

    fakes = MemoryServices(answers={"classify": {"disposition": "STOP_RULE"}})
    await run_message(walk, subject, fakes.services, MemoryLedger())
    assert fakes.blobs.objects[("mail", "in/" + message_id)] == ...

Set a fake's `failing` to an `ActionError` to make its calls fail until it is cleared. The
fakes own nothing but their records; they must not touch disks, sockets or clocks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from inbound.config.fields import function_name
from inbound.core.errors import ActionError
from inbound.core.services import (
    BounceRequest,
    HttpRequest,
    HttpResponse,
    OutboundMail,
    Services,
)


@dataclass
class _Fake:
    failing: ActionError | None = None
    calls: int = 0

    def _called(self) -> None:
        self.calls += 1
        if self.failing is not None:
            raise self.failing


@dataclass
class MemoryBlobStore(_Fake):
    # (bucket, key) -> content, as last stored.
    objects: dict[tuple[str, str], bytes] = field(default_factory=dict)
    # (bucket, key) -> the content type it is served as.
    content_types: dict[tuple[str, str], str] = field(default_factory=dict)

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
        self._called()
        self.objects[(bucket, key)] = content
        self.content_types[(bucket, key)] = content_type

    async def url(self, bucket: str, key: str, *, expires_in: int) -> str:
        self._called()
        return f"memory://{bucket}/{key}"


@dataclass
class MemoryTopic(_Fake):
    # (topic ARN, notification), in publishing order.
    published: list[tuple[str, dict[str, object]]] = field(default_factory=list)

    async def publish(self, topic_arn: str, notification: dict[str, object]) -> None:
        self._called()
        self.published.append((topic_arn, notification))


@dataclass
class MemoryFunction(_Fake):
    """Functions by name: a callable `(event) -> result`, or a fixed answer; a name with
    neither answers None. Every invocation is kept in `invoked`."""

    answers: Mapping[str, object] = field(default_factory=dict)
    functions: Mapping[str, Callable[[dict[str, object]], object]] = field(default_factory=dict)
    # (function name, event, wait), in calling order.
    invoked: list[tuple[str, dict[str, object], bool]] = field(default_factory=list)

    async def invoke(
        self, function_arn: str, event: dict[str, object], *, wait: bool
    ) -> object | None:
        self._called()
        name = function_name(function_arn)
        self.invoked.append((name, event, wait))
        if name in self.functions:
            return self.functions[name](event)
        return self.answers.get(name)


@dataclass
class MemoryMailer(_Fake):
    sent: list[BounceRequest] = field(default_factory=list)

    async def send_bounce(self, bounce: BounceRequest) -> None:
        self._called()
        self.sent.append(bounce)


@dataclass
class MemoryHttp(_Fake):
    """Answers every POST with `status` (200); each request is kept in `posted`."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    posted: list[HttpRequest] = field(default_factory=list)

    async def post(self, request: HttpRequest) -> HttpResponse:
        self._called()
        self.posted.append(request)
        return HttpResponse(self.status, "", dict(self.headers))


@dataclass
class MemoryOutbound(_Fake):
    """Whole messages, as sent; `size` is what `max_size` answers (the relay's SIZE)."""

    sent: list[OutboundMail] = field(default_factory=list)
    size: int | None = None

    async def send(self, mail: OutboundMail) -> None:
        self._called()
        self.sent.append(mail)

    async def max_size(self) -> int | None:
        return self.size


class MemoryServices:
    """One fake of each service, and the `Services` made of them."""

    def __init__(
        self,
        *,
        answers: Mapping[str, object] | None = None,
        functions: Mapping[str, Callable[[dict[str, object]], object]] | None = None,
    ) -> None:
        self.blobs = MemoryBlobStore()
        self.topics = MemoryTopic()
        self.functions = MemoryFunction(
            answers=dict(answers or {}), functions=dict(functions or {})
        )
        self.mailer = MemoryMailer()
        self.http = MemoryHttp()
        self.outbound = MemoryOutbound()
        self.services = Services(
            self.blobs, self.topics, self.functions, self.mailer, self.http, self.outbound
        )
