"""The `webhook` action: POST the message to an HTTP endpoint, signed (SPEC section 3b).

It owns the YAML model (every field checked where it is written), the request of one attempt
(the body in its `format`, the Standard Webhooks headers of `inbound.message.signing`, the
YAML's own headers) and the outcome table: 2xx succeeded; 3xx (never followed) and 4xx are
permanent, except 408, 409, 425 and 429, which are transient like 5xx, timeouts and connection
errors; 429 and 503 pass their `Retry-After` on to the retry schedule. SES has no such action:
`ses export` refuses it (no `ses` mapping).

The secret is read from the environment variable `secret_env` at each attempt and is never
put in a log line, an error or the trace. Sending is the HTTP service's (`Services.http`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from inbound import __version__
from inbound.actions.base import ActionContext, ActionModel, JsonObject
from inbound.actions.s3 import BucketName
from inbound.config.fields import ByteSize, HeaderName, HeaderValue, duration_in_seconds
from inbound.core.errors import PermanentActionError, TransientActionError
from inbound.core.services import HttpRequest, HttpResponse, Services
from inbound.core.steps import Outcome
from inbound.message.notification import encode_content, ses_timestamp
from inbound.message.parsed import AttachmentStore, parse_for_webhook, render_parsed
from inbound.message.signing import SecretError, signed_headers, signing_key, webhook_id
from inbound.targets.http import endpoint

USER_AGENT = f"inbound/{__version__}"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Set by inbound on every request: the YAML's `headers` may not replace them.
RESERVED_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "transfer-encoding",
        "host",
        "connection",
        "user-agent",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)
# SIGTERM lets the attempts in flight finish (inbound.schedule): a timeout bounds the wait.
MAX_TIMEOUT = 60.0
# 4xx statuses worth retrying (SPEC 3b): Request Timeout, Conflict, Too Early, Too Many Requests.
TRANSIENT_4XX = frozenset({408, 409, 425, 429})
# Where a Retry-After is honoured: RFC 6585 §4 (429) and RFC 9110 §15.6.4 (503).
RETRY_AFTER_STATUSES = frozenset({429, 503})
# Messages larger than this are parsed and encoded on a thread, off the event loop.
OFF_LOOP_BYTES = 1024 * 1024


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"{value!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "a URL must not carry credentials (they would be shown in traces): sign with "
            "secret_env, or send a header"
        )
    if any(ord(c) <= 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{value!r} contains spaces or control characters")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port") from None
    return value


def _check_timeout(value: str) -> str:
    seconds = duration_in_seconds(value)
    if seconds is None:
        raise ValueError(f"{value!r} is not a duration like 10s, 500ms or 1m")
    if not 0 < seconds <= MAX_TIMEOUT:
        raise ValueError(f"{value!r}: must be more than 0 and at most {MAX_TIMEOUT:g}s")
    return value


def _check_env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not an environment variable name")
    return value


def _check_headers(value: dict[str, str]) -> dict[str, str]:
    taken = sorted(name for name in value if name.lower() in RESERVED_HEADERS)
    if taken:
        raise ValueError(f"{', '.join(taken)}: set by inbound on every request")
    return value


class SecretMissingError(PermanentActionError):
    """`secret_env` names a variable that is not set (or holds no usable secret)."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"webhook {where}: {reason}")
        self.reason = reason


class WebhookAction(ActionModel):
    receipt_type = "Webhook"
    receipt_fields = {"url": "url", "format": "format"}
    delivers = True

    type: Literal["webhook"]
    url: Annotated[str, AfterValidator(_check_url)]
    format: Literal["parsed", "ses", "raw"] = "parsed"
    secret_env: Annotated[str, AfterValidator(_check_env_name)] | None = None
    attachments: Literal["inline", "url", "omit"] = "inline"
    max_inline_bytes: Annotated[ByteSize, Field(ge=0)] = 1024 * 1024
    attachments_bucket: BucketName | None = None
    timeout: Annotated[str, AfterValidator(_check_timeout)] = "10s"
    headers: Annotated[dict[HeaderName, HeaderValue], AfterValidator(_check_headers)] = {}

    @field_validator("attachments", "max_inline_bytes", "attachments_bucket")
    @classmethod
    def _parsed_only(cls, value: object, info: ValidationInfo) -> object:
        if info.data.get("format", "parsed") != "parsed":
            raise ValueError(f"{info.field_name} applies to format: parsed only")
        return value

    @model_validator(mode="after")
    def _bucket_for_urls(self) -> WebhookAction:
        if self.attachments == "url" and self.attachments_bucket is None:
            raise ValueError("attachments: url needs attachments_bucket (where they are stored)")
        return self

    @property
    def timeout_seconds(self) -> float:
        seconds = duration_in_seconds(self.timeout)
        assert seconds is not None  # validated
        return seconds

    def config_warnings(self) -> list[tuple[tuple[str | int, ...], str]]:
        warnings: list[tuple[tuple[str | int, ...], str]] = []
        if self.secret_env is None:
            warnings.append(
                (
                    (),
                    "no secret_env: requests are not signed, so the endpoint cannot "
                    "tell them from forged ones",
                )
            )
        host = urlsplit(self.url).hostname or ""
        if urlsplit(self.url).scheme == "http" and not _loopback(host):
            warnings.append((("url",), "http:// sends the mail unencrypted: use https://"))
        return warnings

    def environment_issues(self, env: Mapping[str, str]) -> list[tuple[tuple[str | int, ...], str]]:
        try:
            self.secret_key(env)
        except SecretMissingError as exc:
            return [(("secret_env",), exc.reason)]
        return []

    # -- one attempt ------------------------------------------------------------------------

    def secret_key(self, env: Mapping[str, str]) -> bytes | None:
        """The signing key from `env` (None: no secret_env, unsigned)."""
        if self.secret_env is None:
            return None
        secret = env.get(self.secret_env)
        if secret is None:
            raise SecretMissingError(
                endpoint(self.url), f"environment variable {self.secret_env} is not set"
            )
        try:
            return signing_key(secret)
        except SecretError as exc:
            raise SecretMissingError(
                endpoint(self.url), f"environment variable {self.secret_env}: {exc}"
            ) from None

    async def body(self, ctx: ActionContext, services: Services) -> tuple[bytes, str]:
        """The request body in this action's format, and its content type."""
        if self.format == "raw":
            return ctx.content, "message/rfc822"
        if self.format == "ses":
            payload = self.ses_notification(ctx)
        else:
            payload = await self.parsed_payload(ctx, services)
        if len(ctx.content) > OFF_LOOP_BYTES:
            return await asyncio.to_thread(json_bytes, payload), "application/json"
        return json_bytes(payload), "application/json"

    def ses_notification(self, ctx: ActionContext) -> JsonObject:
        """The `Received` notification with `content`: UTF-8 text when the message is UTF-8,
        else base64 (lossless); `receipt.action.encoding` says which, as SES's SNS action."""
        action = self.receipt_action(ctx.message_id)
        try:
            content = ctx.content.decode("utf-8")
            action["encoding"] = "UTF8"
        except UnicodeDecodeError:
            content = encode_content(ctx.content, "base64")
            action["encoding"] = "BASE64"
        notification = ctx.notification(action)
        notification["content"] = content
        return notification

    async def parsed_payload(self, ctx: ActionContext, services: Services) -> JsonObject:
        """SPEC 3b's `parsed` JSON of the message as this action sees it; attachments not
        inlined are stored in `attachments_bucket` (deterministic keys: a retry overwrites)."""
        if len(ctx.content) > OFF_LOOP_BYTES:
            # A 20 MB message takes about half a second to parse: not on the event loop.
            parsed = await asyncio.to_thread(parse_for_webhook, ctx.content, limits=ctx.mime_limits)
        else:
            parsed = parse_for_webhook(ctx.content, limits=ctx.mime_limits)
        store = None
        if self.attachments_bucket is not None:
            store = AttachmentStore(services.blobs, self.attachments_bucket)
        verdicts = ctx.verdicts
        return await render_parsed(
            parsed,
            message_id=ctx.message_id,
            timestamp=ses_timestamp(ctx.received_at),
            rule=ctx.rule,
            mail_from=ctx.mail_from,
            rcpt_to=ctx.recipients,
            verdicts=verdicts.as_json(),
            dmarc_policy=None if verdicts.dmarc_policy is None else verdicts.dmarc_policy.value,
            attachments=self.attachments,
            max_inline_bytes=self.max_inline_bytes,
            store=store,
        )

    async def request(
        self, ctx: ActionContext, services: Services, *, key: bytes | None, now: int
    ) -> HttpRequest:
        """The request of one attempt at `now` (Unix seconds), signed with `key` if given."""
        body, content_type = await self.body(ctx, services)
        msg_id = webhook_id(ctx.message_id, ctx.step.rule, ctx.step.action)
        headers = (
            ("Content-Type", content_type),
            ("User-Agent", USER_AGENT),
            *self.headers.items(),
            *signed_headers(msg_id, now, body, key),
        )
        return HttpRequest(self.url, body, headers, self.timeout_seconds)

    async def execute(self, ctx: ActionContext, services: Services) -> Outcome:
        key = self.secret_key(os.environ)
        request = await self.request(ctx, services, key=key, now=int(time.time()))
        response = await services.http.post(request)
        check_response(response, endpoint(self.url), datetime.now(UTC))
        return Outcome(detail=str(response.status))


def check_response(response: HttpResponse, where: str, now: datetime) -> None:
    """The outcome table: return on 2xx, else raise the failure it is (SPEC section 3b)."""
    status = response.status
    if 200 <= status < 300:
        return
    answered = f"webhook {where} answered {status} {response.reason}".rstrip()
    if status in TRANSIENT_4XX or status >= 500:
        wait = None
        if status in RETRY_AFTER_STATUSES:
            wait = retry_after(response.headers.get("retry-after"), now)
        raise TransientActionError(answered, retry_after=wait)
    if 300 <= status < 400:
        raise PermanentActionError(f"{answered}: redirects are not followed")
    raise PermanentActionError(answered)


def retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a `Retry-After` asks for: delay-seconds or an HTTP-date (RFC 9110 §10.2.3);
    None when absent or unreadable (the schedule decides)."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # RFC 9110 §5.6.7: HTTP dates are GMT
    return max((when - now).total_seconds(), 0.0)


def json_bytes(payload: object) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
