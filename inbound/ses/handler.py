"""The Lambda handler for mail that Amazon SES received (SPEC section 8).

This module owns what is particular to SES: reading the event, the message and its state
object, and the answer to SES. The run itself is the one runner's (`inbound.run.runner`), with
the S3 step ledger (`inbound.run.ledgers.S3Ledger`); it must not run an action itself.

Configure it as `inbound.ses.handler.lambda_handler` for a Lambda action of an SES receipt rule,
or subscribe it to the SNS topic of an S3 (or SNS) action. It accepts:

- the SES Lambda event (`Records[0].eventSource == "aws:ses"`);
- an SNS event (`Records[0].EventSource == "aws:sns"`) whose `Sns.Message` is a `Received`
  notification; SES's setup notification (`AMAZON_SES_SETUP_NOTIFICATION`) is ignored.
Anything else raises `SesEventError`, which Lambda reports as the invocation's error.

**The message.** The notification's `content` when present (UTF-8 or base64, per
`receipt.action.encoding`); otherwise the object SES stored: the receipt's S3 action
(`bucketName`, `objectKey`), else `INBOUND_SES_BUCKET` + `INBOUND_SES_PREFIX` + messageId. The
bytes are used as SES stored them: SES's own prepended headers are not added a second time.

**Facts.** The five verdicts and `dmarcPolicy` come from the receipt (`spamVerdict.status`, ...);
nothing is rescanned. A verdict the receipt lacks takes the `Verdicts` default (spam/virus
DISABLED, spf/dkim/dmarc GRAY). As everywhere, spam and virus stay DISABLED unless a matching
YAML rule has `scan_enabled: true`. The envelope is `mail.source` and `receipt.recipients`.

**No connection facts** (decision). SES tells a Lambda nothing about TLS, and the client's IP
only inside its `Received` header (which the guard Lambda reads for `client_ip`). The handler
evaluates with client IP 0.0.0.0 and TLS on, and therefore:
- the YAML's receipt IP `filters` are not applied (SES applied its own at connection time);
- `tls_policy: require` does not exclude a rule (SES enforced its rule's TLS policy);
- an enabled rule with a `client_ip` or `tls` condition in `when`/`unless` makes the rule set
  unusable here: loading raises `SesRuleSetError` naming those rules, rather than deciding on a
  made-up fact. Such conditions belong in the rule set of the SMTP receiver.

**Rules.** The YAML (or SES JSON) rule set at `INBOUND_RULES` is loaded once per container and
cached. Its actions run in order through the one runner (`inbound.run.runner`) with the AWS
services (`AwsTargets()`). The result is
`{"disposition": "STOP_RULE_SET"}` when the YAML's rules stopped (a `stop` action, or a
request_response Lambda returning STOP_RULE_SET), else `{"disposition": "CONTINUE"}`. A failing
action raises its `ActionError`: the invocation fails and SES (or Lambda's asynchronous retry)
delivers the event again.

**Beyond the MIME limits** (decision). A message with more than 1,000 parts or 50 levels of
nesting, for recipients whose rules have an `attachment` condition, is refused as the receiver
refuses it in the session (`554 5.6.0`): no action runs, `ses.message_refused` is logged (a
warning), and the result is `STOP_RULE_SET`, so SES runs none of its later rules for it either.
Under `inbound ses consume` the notification is then done with (deleted from the queue).

**Idempotency.** SES may deliver the same event twice. After each action that succeeds, the
handler writes `INBOUND_SES_STATE_PREFIX` (default `inbound-state/`) + messageId + `.json` in the
bucket the message came from (or `INBOUND_SES_BUCKET`): the succeeded step keys
(`RULE:ACTION`) with any recorded result (a Lambda disposition). A second run skips those steps
and replays the recorded dispositions. An action interrupted between its success and the state
write runs again (at least once). Two runs of one message at the same time (SQS hands out a
notification twice; Lambda retries an invocation still running) cannot both run it: before any
action a run claims the message in that object, with S3 conditional writes (`If-Match` /
`If-None-Match`), until its invocation's time is up (`ses consume`: the visibility timeout); the
other gets `MessageBusyError` (Lambda: the invocation fails and is retried; `ses consume` leaves
the notification until the claim ends), and the claim is released when the run ends. With no
bucket at all (inline `content` and no
`INBOUND_SES_BUCKET`) nothing is recorded: a redelivered event runs every action again (S3 puts
are overwritten with the same object, but SNS publishes, Lambda invocations and bounces repeat).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inbound.core.envelope import Connection, Envelope
from inbound.core.errors import ActionError, InboundError
from inbound.core.message import MessageFacts
from inbound.core.services import Services
from inbound.core.steps import StepKey
from inbound.message.notification import DIGEST_ATTRIBUTE
from inbound.message.parse import parse_headers, parse_message
from inbound.message.read import need_for
from inbound.observe.log import emit, emit_fields
from inbound.rules.compiled import CompiledRuleSet
from inbound.rules.evaluate import Evaluation, Step, message_keys
from inbound.run.context import RunSubject
from inbound.run.ledgers import S3Ledger
from inbound.run.runner import RunResult, run_message
from inbound.ses.event import (
    Receipt,
    SesEventError,
    parse_event,
    verdicts_of,
)
from inbound.ses.rulesets import (
    CONNECTION_KEYS,
    SesConfigError,
    SesRuleSetError,
    clear_rules,
    rules_at,
    rules_by_digest,
)
from inbound.targets.aws import AwsTargets, SesOutbound, aws_session
from inbound.targets.http import WebhookHttp

# Re-exported: the handler's callers catch these without knowing where events are parsed.
__all__ = [
    "CONNECTION_KEYS",
    "Receipt",
    "SesEventError",
    "SesRuleSetError",
    "lambda_handler",
    "parse_event",
    "rules_at",
    "verdicts_of",
]

log = logging.getLogger("inbound.ses")

DEFAULT_STATE_PREFIX = "inbound-state/"
# A run that cannot say how long it has (no Lambda context) holds its message at most this
# long: a Lambda invocation's own limit (15 minutes).
LONGEST_RUN = 900.0
# Connection facts SES does not give: see the module docstring.
UNKNOWN_CLIENT = Connection.of("0.0.0.0", "unknown", tls=True)  # noqa: S104 - not a bind address
CONTINUE = {"disposition": "CONTINUE"}
STOP_RULE_SET = {"disposition": "STOP_RULE_SET"}


class SesMessageError(InboundError):
    """The raw message could not be read (S3 object missing, content not decodable)."""


def _timestamp(body: Mapping[str, object], fallback: datetime) -> datetime:
    value = body.get("timestamp")
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return fallback
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return fallback


# -- the rule set and the clients, once per container -----------------------------------------

_lock = threading.Lock()
_clients: dict[str, Any] = {}


def clear_caches() -> None:
    """Forget the cached rule sets, targets and clients (tests; a new configuration)."""
    with _lock:
        _clients.clear()
    clear_rules()


def _s3() -> Any:
    with _lock:
        client = _clients.get("s3")
        if client is None:
            client = _clients["s3"] = aws_session().client("s3")
    return client


def _targets() -> AwsTargets:
    with _lock:
        targets = _clients.get("targets")
        if targets is None:
            # Webhooks trust the system store, plus INBOUND_WEBHOOK_CA's certificates if set
            # (the handler's twin of `inbound serve --webhook-ca`).
            ca = os.environ.get("INBOUND_WEBHOOK_CA") or None
            http = WebhookHttp(ca_file=None if ca is None else Path(ca))
            targets = _clients["targets"] = AwsTargets(http=http)
    assert isinstance(targets, AwsTargets)
    return targets


# -- the message and its state --------------------------------------------------------------


def raw_message(found: Receipt, env: Mapping[str, str]) -> tuple[bytes, str | None]:
    """The message's bytes and the bucket that keeps its state (None: no bucket)."""
    env_bucket = env.get("INBOUND_SES_BUCKET") or None
    action = found.action
    if found.content is not None:
        encoding = str(action.get("encoding", "UTF8")).upper()
        if encoding == "BASE64":
            try:
                return base64.b64decode(found.content, validate=True), env_bucket
            except binascii.Error as exc:
                raise SesMessageError(f"content is not valid base64: {exc}") from None
        return found.content.encode("utf-8"), env_bucket
    bucket, key = action.get("bucketName"), action.get("objectKey")
    if action.get("type") == "S3" and isinstance(bucket, str) and bucket:
        if not isinstance(key, str) or not key:
            key = _object_key(str(action.get("objectKeyPrefix") or ""), found.message_id)
    elif env_bucket is not None:
        bucket = env_bucket
        key = _object_key(env.get("INBOUND_SES_PREFIX", ""), found.message_id)
    else:
        raise SesConfigError(
            f"message {found.message_id}: the event has no content and no S3 action; set "
            "INBOUND_SES_BUCKET (and INBOUND_SES_PREFIX) to where SES stores the messages"
        )
    try:
        body = _s3().get_object(Bucket=bucket, Key=key)["Body"]
        data: bytes = body.read()
    except Exception as exc:  # botocore's errors: a missing object, a denied read, ...
        raise SesMessageError(f"cannot read s3://{bucket}/{key}: {exc}") from exc
    return data, bucket


def _object_key(prefix: str, message_id: str) -> str:
    if prefix and not prefix.endswith("/"):
        return f"{prefix}/{message_id}"
    return f"{prefix}{message_id}"


# -- the run ----------------------------------------------------------------------------------


def lambda_handler(event: object, context: object) -> dict[str, str]:
    """Apply the rule set at `INBOUND_RULES` to one SES receipt; see the module docstring."""
    found = parse_event(event)
    if found is None:
        emit(log, "ses.setup_notification_ignored")
        return dict(CONTINUE)
    env = os.environ
    rules = _rules_for(event, found, env)
    raw, bucket = raw_message(found, env)
    prefix = env.get("INBOUND_SES_STATE_PREFIX", DEFAULT_STATE_PREFIX)
    s3 = _s3() if bucket is not None else None
    ledger = S3Ledger.load(s3, bucket, f"{prefix}{found.message_id}.json", found.message_id)
    ledger.claim(_hold(context))  # MessageBusyError: a run of this message is under way
    targets = _targets()
    services = Services.of(targets, ses_outbound=SesOutbound(targets))
    try:
        result = asyncio.run(run_receipt(rules, found, raw, ledger, services))
    finally:
        if ledger.holding:  # refused, or an error before the run's end: let the next one in
            _let_go(ledger)
    plan = result.plan
    stopped = plan.refused is not None or any(
        run.stop in ("Stop", "STOP_RULE_SET") for run in plan.rules
    )
    return dict(STOP_RULE_SET if stopped else CONTINUE)


def _rules_for(event: object, found: Receipt, env: Mapping[str, str]) -> CompiledRuleSet:
    """The rule set the message names (`serve --spool s3://`'s digest), else INBOUND_RULES's."""
    digest = _digest_attribute(event)
    action = found.action
    if digest is not None and action.get("type") == "S3" and action.get("bucketName"):
        prefix = str(action.get("objectKeyPrefix") or "")
        return rules_by_digest(_s3(), str(action["bucketName"]), prefix, digest)
    path = env.get("INBOUND_RULES")
    if not path:
        raise SesConfigError("INBOUND_RULES is not set: the path of the YAML rule set")
    return rules_at(path)


def _digest_attribute(event: object) -> str | None:
    """`Records[0].Sns.MessageAttributes[DIGEST_ATTRIBUTE].Value`, if the event has one."""
    try:
        value = event["Records"][0]["Sns"]["MessageAttributes"][DIGEST_ATTRIBUTE]["Value"]  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        return None
    return value if isinstance(value, str) else None


def _facts(rules: CompiledRuleSet, envelope: Envelope, raw: bytes) -> MessageFacts:
    """One streaming read of the bytes in hand: their parts' header blocks, never a body."""
    need = need_for(message_keys(rules, envelope.rcpt_tos))
    if need == "nothing":
        return MessageFacts(size=len(raw))
    return parse_headers(raw) if need == "headers" else parse_message(raw)


async def run_receipt(
    rules: CompiledRuleSet,
    found: Receipt,
    raw: bytes,
    ledger: S3Ledger,
    services: Services,
) -> RunResult:
    """Evaluate and execute one receipt through the runner, skipping the steps a previous
    run recorded; a failing action raises its error (SES delivers the event again)."""
    mail, receipt = found.mail, found.receipt
    source = mail.get("source")
    recipients = receipt.get("recipients")
    if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
        raise SesEventError("receipt.recipients is missing or not a list of addresses")
    envelope = Envelope(source if isinstance(source, str) else "", tuple(recipients))
    facts = _facts(rules, envelope, raw)
    walk = Evaluation(
        rules,
        message_id=found.message_id,
        connection=UNKNOWN_CLIENT,
        envelope=envelope,
        message=facts,
        verdicts=verdicts_of(receipt),
    )
    if walk.refused is not None:
        # SES took the message already; our rules refuse it as the receiver would
        # (554 5.6.0): no action runs, and the rest of SES's rule set is stopped.
        plan = walk.plan()
        emit(
            log,
            "ses.message_refused",
            level=logging.WARNING,
            message_id=found.message_id,
            code=plan.data_reply.code if plan.data_reply else None,
            mime_limit=facts.mime_limit,
        )
        return RunResult(plan)
    received_at = _timestamp(mail, datetime.now(UTC))
    took = receipt.get("processingTimeMillis")
    subject = RunSubject(
        message_id=found.message_id,
        mail_from=envelope.mail_from,
        base=raw,
        received_at=received_at,
        processing_ms=lambda: took if isinstance(took, int) else 0,
        receipt_at=_timestamp(receipt, received_at),
        ses_mail=dict(mail),
    )
    result = await run_message(walk, subject, services, ledger, _ActionLog(found.message_id))
    ledger.release()  # over, whatever the outcome: a later delivery need not wait for the claim
    await ledger.flush()
    if result.failed is not None:
        raise result.failed
    return result


def _hold(context: object) -> float:
    """How long this run may hold the message: the invocation's remaining time (Lambda's
    context; `ses consume` gives its visibility timeout the same way), else Lambda's most."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if callable(remaining):
        return max(1.0, float(remaining()) / 1000)
    return LONGEST_RUN


def _let_go(ledger: S3Ledger) -> None:
    """Best effort: an error here must not hide the one that ended the run."""
    ledger.release()
    try:
        asyncio.run(ledger.flush())
    except Exception as exc:  # the claim then ends at its `until`
        emit(log, "ses.release_failed", level=logging.WARNING, error_type=type(exc).__name__)


class _ActionLog:
    """`ses.action_succeeded` / `ses.action_failed` log lines."""

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id

    def ran(self, step: Step, key: StepKey, attempt: int, error: ActionError | None) -> None:
        fields = {
            "message_id": self.message_id,
            "rule": step.rule.name,
            "action": step.action.receipt_type,
            "step": str(key),
        }
        if error is None:
            emit_fields(log, "ses.action_succeeded", fields)
        else:
            failure = {**fields, "error": str(error)}
            emit_fields(log, "ses.action_failed", failure, level=logging.WARNING)
