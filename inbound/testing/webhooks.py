"""The webhook requests a plan would send, built offline: `inbound evaluate --json`, `inbound
test --show-webhooks` and `inbound webhook sample` show them; `expect: {webhooks: [...]}`
checks their URLs.

Each request is built by the webhook action itself (`WebhookAction.request`), from the message
as `inbound serve` would hand it to the action: the prepended trace headers of SPEC section 5,
then the `add_header` actions evaluation reached before it. Services are the in-memory fakes
(`inbound.targets.memory`): nothing is stored or sent. A request is signed when its
`secret_env` is set in the environment given, else shown unsigned with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from inbound.actions.base import ActionModel
from inbound.actions.webhook import SecretMissingError, WebhookAction
from inbound.core.envelope import Connection, Envelope
from inbound.core.plan import Plan
from inbound.core.services import HttpRequest
from inbound.core.steps import StepKey
from inbound.message.headers import ReceivedFacts, prepend_headers
from inbound.run.context import RunSubject, action_context
from inbound.targets.memory import MemoryServices


@dataclass(frozen=True)
class WebhookPreview:
    rule: str
    step: StepKey
    request: HttpRequest
    # Why the request is not signed although the action has a secret_env (None: it is, or
    # the action has none).
    unsigned: str | None = None

    def as_json(self) -> dict[str, object]:
        """The request for `--json` output: the body as JSON when it is JSON, else as text."""
        headers = dict(self.request.headers)
        body: object
        if headers.get("Content-Type") == "application/json":
            body = json.loads(self.request.body)
        else:
            body = self.request.body.decode("utf-8", "replace")
        out: dict[str, object] = {
            "rule": self.rule,
            "step": str(self.step),
            "url": self.request.url,
            "headers": headers,
            "body": body,
        }
        if self.unsigned is not None:
            out["unsigned"] = self.unsigned
        return out


def as_received(
    data: bytes,
    plan: Plan,
    *,
    envelope: Envelope,
    connection: Connection,
    hostname: str,
    now: datetime,
) -> bytes:
    """The message with the trace headers `inbound serve` prepends (SPEC section 5)."""
    facts = ReceivedFacts(
        message_id=plan.message_id,
        hostname=hostname,
        mail_from=envelope.mail_from,
        rcpt_tos=plan.accepted_recipients,
        helo=connection.helo,
        client_ip=connection.client_ip,
        rdns=None,
        tls=connection.tls,
        received_at=now,
        verdicts=plan.verdicts,
    )
    return prepend_headers(data, facts)


async def preview_webhooks(
    plan: Plan,
    data: bytes,
    *,
    envelope: Envelope,
    connection: Connection,
    hostname: str,
    env: Mapping[str, str],
    now: datetime,
) -> list[WebhookPreview]:
    """Every webhook request of `plan`, in order (none when the message is refused)."""
    if plan.outcome != "accepted" or not plan.rules:
        return []
    fakes = MemoryServices()
    subject = RunSubject(
        message_id=plan.message_id,
        mail_from=envelope.mail_from,
        base=as_received(
            data, plan, envelope=envelope, connection=connection, hostname=hostname, now=now
        ),
        received_at=now,
        processing_ms=lambda: 0,
        hostname=hostname,
    )
    content = subject.base
    previews: list[WebhookPreview] = []
    for run in plan.rules:
        for planned in run.actions:
            action = planned.action
            key = StepKey(run.index, planned.index)
            ctx = action_context(
                subject, content, run.recipients, plan.verdicts, rule=run.name, step=key
            )
            if isinstance(action, WebhookAction):
                unsigned = None
                try:
                    secret = action.secret_key(env)
                except SecretMissingError as exc:
                    secret, unsigned = None, exc.reason
                request = await action.request(
                    ctx, fakes.services, key=secret, now=int(now.timestamp())
                )
                previews.append(WebhookPreview(run.name, key, request, unsigned))
            elif isinstance(action, ActionModel) and action.pure:
                # add_header: later actions see the message with it (as the runner does).
                outcome = await action.execute(ctx, fakes.services)
                if outcome.content is not None:
                    content = outcome.content
    return previews


def webhook_urls(plan: Plan) -> list[str]:
    """The URLs of the plan's webhook actions, in order (`expect: {webhooks: [...]}`)."""
    return [
        step.action.url
        for run in plan.rules
        for step in run.actions
        if isinstance(step.action, WebhookAction)
    ]
