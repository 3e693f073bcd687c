"""The spool's records as plain data, and the retry schedule: pure, no I/O, no clock.

`SpoolMeta` is meta.json and `DispatchState` is state.json (`inbound.spool.store` keeps them);
the functions decide when a message is tried again and when it is dead-lettered (SPEC §7:
backoff for up to 4 hours). The caller passes `now`, so every decision is a plain function.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from ipaddress import ip_address
from typing import Any

from inbound.core.envelope import Connection, Envelope
from inbound.core.message import Attachment, Header, MessageFacts
from inbound.core.steps import StepRecord as StepRecord  # noqa: PLC0414 - moved to core; re-exported
from inbound.core.verdicts import VERDICT_KINDS, DmarcPolicy, Verdict, Verdicts
from inbound.message.headers import AuthDetails, DkimResult, ReceivedFacts

# The longest exponent worth computing: 2**1000 already exceeds any sensible cap.
_MAX_DOUBLINGS = 1000


@dataclass(frozen=True)
class SpoolMeta:
    """What the receiver knew of a message when it answered 250; never changes afterwards."""

    message_id: str
    envelope: Envelope
    connection: Connection
    received_at: datetime  # UTC, timezone-aware
    rules_digest: str
    hostname: str
    verdicts: Verdicts
    size: int
    # The SPF/DKIM/DMARC words of our Received-SPF and Authentication-Results headers.
    auth: AuthDetails = field(default_factory=AuthDetails)
    # The message facts the rules needed at receipt, so the dispatcher never reads the message
    # for them again (parse once); None: none were needed, or spooled before they were kept.
    facts: MessageFacts | None = None

    def received(self) -> ReceivedFacts:
        """What the prepended headers (SPEC section 5) say of this message: the same whether
        the dispatcher or the S3 spool prepends them."""
        return ReceivedFacts(
            message_id=self.message_id,
            hostname=self.hostname,
            mail_from=self.envelope.mail_from,
            rcpt_tos=self.envelope.rcpt_tos,
            helo=self.connection.helo,
            client_ip=self.connection.client_ip,
            rdns=None,
            tls=self.connection.tls,
            received_at=self.received_at,
            verdicts=self.verdicts,
            auth=self.auth,
        )

    def to_json(self) -> dict[str, Any]:
        env, conn, ver = self.envelope, self.connection, self.verdicts
        policy = None if ver.dmarc_policy is None else ver.dmarc_policy.value
        return {
            "message_id": self.message_id,
            "envelope": {"mail_from": env.mail_from, "rcpt_tos": list(env.rcpt_tos)},
            "connection": {"client_ip": str(conn.client_ip), "helo": conn.helo, "tls": conn.tls},
            "received_at": self.received_at.isoformat(),
            "rules_digest": self.rules_digest,
            "hostname": self.hostname,
            "verdicts": ver.as_json() | {"dmarc_policy": policy},
            "size": self.size,
            "auth": {
                "spf": self.auth.spf,
                "spf_explanation": self.auth.spf_explanation,
                "dkim": [asdict(result) for result in self.auth.dkim],
                "dmarc": self.auth.dmarc,
                "from_domain": self.auth.from_domain,
                "dmarc_policy": self.auth.dmarc_policy,
            },
            "facts": None if self.facts is None else facts_to_json(self.facts),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SpoolMeta:
        env, conn, ver = data["envelope"], data["connection"], data["verdicts"]
        spam, virus, spf, dkim, dmarc = (Verdict(ver[kind]) for kind in VERDICT_KINDS)
        policy = None if ver["dmarc_policy"] is None else DmarcPolicy(ver["dmarc_policy"])
        return cls(
            message_id=str(data["message_id"]),
            envelope=Envelope(str(env["mail_from"]), tuple(str(r) for r in env["rcpt_tos"])),
            connection=Connection(ip_address(conn["client_ip"]), conn["helo"], conn["tls"]),
            received_at=datetime.fromisoformat(data["received_at"]),
            rules_digest=str(data["rules_digest"]),
            hostname=str(data["hostname"]),
            verdicts=Verdicts(spam, virus, spf, dkim, dmarc, policy),
            size=int(data["size"]),
            auth=_auth_from_json(data.get("auth")),
            facts=None if data.get("facts") is None else facts_from_json(data["facts"]),
        )


def facts_to_json(facts: MessageFacts) -> dict[str, Any]:
    return {
        "size": facts.size,
        "headers": [[h.name, h.value, h.decoded] for h in facts.headers],
        "from": list(facts.from_addresses),
        "to": list(facts.to_addresses),
        "cc": list(facts.cc_addresses),
        "subject": facts.subject,
        "attachments": [[a.filename, a.content_type] for a in facts.attachments],
        "defects": list(facts.defects),
        "mime_limit": facts.mime_limit,
    }


def facts_from_json(data: Mapping[str, Any]) -> MessageFacts:
    subject = data["subject"]
    return MessageFacts(
        size=int(data["size"]),
        headers=tuple(Header(str(n), str(v), str(d)) for n, v, d in data["headers"]),
        from_addresses=tuple(str(a) for a in data["from"]),
        to_addresses=tuple(str(a) for a in data["to"]),
        cc_addresses=tuple(str(a) for a in data["cc"]),
        subject=None if subject is None else str(subject),
        attachments=tuple(
            Attachment(None if f is None else str(f), str(t)) for f, t in data["attachments"]
        ),
        defects=tuple(str(d) for d in data["defects"]),
        mime_limit=None if data["mime_limit"] is None else str(data["mime_limit"]),
    )


def _auth_from_json(data: Mapping[str, Any] | None) -> AuthDetails:
    if not data:
        return AuthDetails()  # spooled before authentication was recorded
    return AuthDetails(
        spf=str(data["spf"]),
        spf_explanation=str(data["spf_explanation"]),
        dkim=tuple(
            DkimResult(str(d["result"]), str(d["domain"]), str(d["selector"])) for d in data["dkim"]
        ),
        dmarc=str(data["dmarc"]),
        from_domain=str(data["from_domain"]),
        dmarc_policy=str(data.get("dmarc_policy", "")),  # not kept before forwarding
    )


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _datetime(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@dataclass
class DispatchState:
    """Dispatch progress of one message; a fresh one means "never attempted"."""

    # Keyed "RULE:ACTION" by positions in the rule set the message was received with, so a
    # retry skips what already succeeded (SPEC §7: an action is not repeated).
    steps: dict[str, StepRecord] = field(default_factory=dict)
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    dead_reason: str | None = None
    # When an operator last moved the message back from dead/: its retry window starts anew.
    retried_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": {key: asdict(step) for key, step in self.steps.items()},
            "attempts": self.attempts,
            "next_attempt_at": _iso(self.next_attempt_at),
            "last_error": self.last_error,
            "dead_reason": self.dead_reason,
            "retried_at": _iso(self.retried_at),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DispatchState:
        steps = {str(key): StepRecord(**step) for key, step in data["steps"].items()}
        if bad := [k for k, s in steps.items() if s.outcome not in ("succeeded", "failed")]:
            raise ValueError(f"steps {bad}: outcome is neither 'succeeded' nor 'failed'")
        return cls(
            steps,
            int(data["attempts"]),
            _datetime(data["next_attempt_at"]),
            data["last_error"],
            data["dead_reason"],
            _datetime(data.get("retried_at")),
        )

    def succeeded(self, key: str) -> bool:
        """Whether the step `key` ("RULE:ACTION") already succeeded and must not run again."""
        step = self.steps.get(key)
        return step is not None and step.outcome == "succeeded"


def next_delay(attempt: int, *, base: float = 60.0, cap: float = 3600.0) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): base, 2 base, … cap."""
    if attempt < 1:
        raise ValueError(f"attempt must be 1 or more, not {attempt}")
    if base <= 0 or cap < base:
        raise ValueError(f"need 0 < base <= cap, got base={base} cap={cap}")
    # A float product overflows to inf, never raises, and min() then picks the cap.
    return min(cap, base * 2.0 ** min(attempt - 1, _MAX_DOUBLINGS))


def _require_aware(**values: datetime) -> None:
    for name, value in values.items():
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{name} must be timezone-aware, got {value.isoformat()}")


def is_expired(received_at: datetime, now: datetime, max_age: timedelta) -> bool:
    """Whether a message received at `received_at` has been retried for long enough."""
    _require_aware(received_at=received_at, now=now)
    return now - received_at >= max_age


def next_attempt_at(
    attempt: int,
    received_at: datetime,
    now: datetime,
    max_age: timedelta,
    *,
    base: float = 60.0,
    cap: float = 3600.0,
    retry_after: float | None = None,
) -> datetime | None:
    """When to try again after failed attempt `attempt`, or None: dead-letter it now.

    A retry that would fall after the deadline is moved up to the deadline itself, so the
    window is exact: one last attempt at its end, and its failure dead-letters the message.
    `retry_after` (seconds a target asked for, HTTP Retry-After) replaces the backoff delay
    of this attempt, bounded by the schedule: at most `cap`, and never past the deadline.
    """
    if is_expired(received_at, now, max_age):
        return None
    if retry_after is not None:
        delay = min(max(retry_after, 0.0), cap)
    else:
        delay = next_delay(attempt, base=base, cap=cap)
    return min(now + timedelta(seconds=delay), received_at + max_age)


@dataclass(frozen=True)
class RetryPolicy:
    """`--max-retry-age`, `--retry-delay`, `--max-retry-delay`: the schedule of one message."""

    # SES retries a failing action for up to 4 hours (PublishExpired).
    max_age: timedelta = timedelta(hours=4)
    base_delay: float = 60.0
    max_delay: float = 3600.0

    def next_attempt(
        self,
        meta: SpoolMeta,
        state: DispatchState,
        now: datetime,
        retry_after: float | None = None,
    ) -> datetime | None:
        """When to try again after `state.attempts` failed attempts, or None: dead-letter it.

        The window starts at receipt, or at the operator's last `inbound spool retry`; a
        target's `retry_after` replaces the backoff delay (`next_attempt_at`)."""
        return next_attempt_at(
            state.attempts,
            window_start(meta.received_at, state),
            now,
            self.max_age,
            base=self.base_delay,
            cap=self.max_delay,
            retry_after=retry_after,
        )


def window_start(received_at: datetime, state: DispatchState) -> datetime:
    """Where the retry window of a message begins: receipt, or the operator's last retry."""
    return received_at if state.retried_at is None else max(received_at, state.retried_at)


def is_due(state: DispatchState, now: datetime) -> bool:
    """Whether a queued message should be attempted at `now` (never attempted: yes)."""
    if state.dead_reason is not None:
        return False
    if state.next_attempt_at is None:
        return True
    _require_aware(now=now, next_attempt_at=state.next_attempt_at)
    return state.next_attempt_at <= now
