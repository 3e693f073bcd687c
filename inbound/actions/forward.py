"""The `forward` action: send the message on to other addresses (SPEC section 3b).

This module owns the YAML model (`to` with the groups of the rule's `re:` recipient pattern,
`via`, `from_mode` and its defaults, `from_address`, `srs_domain`, `dkim`, `on_oversize`), the
plan of one forward (`plan_forward`: the destinations, the From mode chosen and why, the
envelope sender; `inbound evaluate`/`test` show the same plan the executor sends) and the
executor. Each destination is one part of the step (`Parts`): the runner records each apart,
so a retry sends only to the destinations not yet done.

What a forward sends, in order: the message as the earlier actions left it, the `rewrite`
header edits when that mode is chosen (`inbound.message.forward`), the loop marker
`X-Inbound-Forwarded`, then the forwarder's DKIM signature over all of it
(`inbound.message.dkim_sign`). The envelope sender is SRS for `preserve` (SPF passes for the
`srs_domain` at the next hop and bounces come back through inbound), `from_address` for
`rewrite` (SPF aligns with the new From), and the null sender stays null (RFC 3464 §2).
It does no SMTP or SES itself: `services.outbound` (the relay, or the local outbox) and
`services.ses_outbound` (SES `SendEmail`) do.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address as EmailAddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from inbound.actions.base import ActionContext, ActionModel, Parts, RuleProblem
from inbound.actions.forward_plan import (
    GROUP_REFERENCE,
    ForwardPlan,
    Mode,
    choose_mode,
    expand_destinations,
    has_group,
)
from inbound.config.fields import Address, Domain, NonEmpty
from inbound.core.errors import InputError, PermanentActionError
from inbound.core.plan import Plan
from inbound.core.services import OutboundMail, Services
from inbound.core.steps import Outcome
from inbound.core.verdicts import DmarcPolicy, Verdicts
from inbound.message.dkim_sign import DkimKeyError, DkimSignError, SigningKey, load_key, sign
from inbound.message.forward import loop_reason, mark_forwarded, rewrite
from inbound.observe.log import emit
from inbound.rules.match import compile_scanned
from inbound.srs import SECRETS_ENV, SrsKeys, srs_forward

log = logging.getLogger("inbound.forward")

# SES v2 SendEmail: a raw message of at most 40 MB.
SES_MAX_BYTES = 40 * 1024 * 1024
_SELECTOR = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?")


def _as_list(value: object) -> object:
    return value if isinstance(value, list) else [value]


def _check_destination(value: str) -> str:
    """An address, once each group reference stands for some text; no other backslash."""
    filled = GROUP_REFERENCE.sub("x", value)
    if "\\" in filled:
        raise ValueError(f"{value!r}: a backslash only starts a group (\\1, \\g<name>)")
    _check_mailbox(filled, value)
    return value


def _check_mailbox(filled: str, written: str) -> str:
    try:
        parsed = EmailAddress(addr_spec=filled)
    except (ValueError, IndexError):
        parsed = None
    if parsed is None or not parsed.domain or " " in filled or filled.count("@") != 1:
        raise ValueError(f"{written!r} is not an email address")
    return written


def _check_from_address(value: str) -> str:
    return _check_mailbox(value, value)


def _check_selector(value: str) -> str:
    if not _SELECTOR.fullmatch(value):
        raise ValueError(f"{value!r} is not a DKIM selector (letters, digits, '.', '-', '_')")
    return value


Destination = Annotated[str, AfterValidator(_check_destination)]


class DkimSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    domain: Domain
    selector: Annotated[str, AfterValidator(_check_selector)]
    key_file: NonEmpty


class ForwardAction(ActionModel):
    receipt_type = "Forward"
    receipt_fields = {
        "to": "to",
        "via": "via",
        "fromMode": "from_mode",
        "fromAddress": "from_address",
        "srsDomain": "srs_domain",
    }
    delivers = True

    type: Literal["forward"]
    to: Annotated[list[Destination], BeforeValidator(_as_list), Field(min_length=1)]
    via: Literal["relay", "ses"] = "relay"
    from_mode: Literal["rewrite", "when_dmarc", "preserve"] | None = None
    from_address: Annotated[Address, AfterValidator(_check_from_address)] | None = None
    srs_domain: Domain | None = None
    dkim: DkimSettings | None = None
    on_oversize: Literal["bounce", "drop"] = "bounce"

    @property
    def mode(self) -> Literal["rewrite", "when_dmarc", "preserve"]:
        """The From mode, defaults applied: rewrite with via: ses, else when_dmarc."""
        if self.from_mode is not None:
            return self.from_mode
        return "rewrite" if self.via == "ses" else "when_dmarc"

    @model_validator(mode="after")
    def _required_fields(self) -> ForwardAction:
        if self.mode != "preserve" and self.from_address is None:
            raise ValueError(
                f"from_address is required with from_mode: {self.mode} "
                "(the From of a rewritten forward); only from_mode: preserve goes without"
            )
        if self.via == "relay" and self.mode != "rewrite" and self.srs_domain is None:
            raise ValueError(
                f"srs_domain is required with via: relay and from_mode: {self.mode} "
                "(the envelope sender is rewritten with SRS at that domain)"
            )
        return self

    def receipt_action(self, message_id: str) -> dict[str, object]:
        out = super().receipt_action(message_id)
        out["to"] = list(self.to)
        out["fromMode"] = self.mode
        return out

    def problems_in_rule(
        self, recipients: Sequence[str], domains: Sequence[str]
    ) -> Iterable[RuleProblem]:
        regexes = [compile_scanned(p) for p in recipients if p.startswith("re:")]
        for k, template in enumerate(self.to):
            for ref in GROUP_REFERENCE.finditer(template):
                group = ref.group(1) if ref.group(1) is not None else ref.group(2)
                if not recipients or len(regexes) != len(recipients):
                    yield RuleProblem(
                        ("to", k),
                        f"{ref.group(0)} needs the rule's recipients to be re: patterns "
                        "(the destination is made from the pattern that matched)",
                    )
                    break
                for pattern, regex in zip(recipients, regexes, strict=True):
                    if not has_group(regex, group):
                        yield RuleProblem(("to", k), f"{pattern!r} has no group {ref.group(0)}")
        if self.via == "ses" and self.mode == "preserve":
            yield RuleProblem(
                ("from_mode",),
                "via: ses with from_mode: preserve: SES sends only From addresses it verified "
                '("Email address is not verified"), so most forwards will fail; use rewrite',
                warning=True,
            )
        if self.from_address is not None:
            domain = self.from_address.rpartition("@")[2].lower()
            if not any(domain == d or domain.endswith("." + d) for d in domains):
                yield RuleProblem(
                    ("from_address",),
                    f"{self.from_address!r} is not in a receiving domain "
                    f"({', '.join(domains)}): replies to it and its bounces will not come here",
                    warning=True,
                )

    def environment_issues(self, env: Mapping[str, str]) -> list[tuple[tuple[str | int, ...], str]]:
        """A forward that rewrites the envelope sender with SRS needs `INBOUND_SRS_SECRETS`, and
        one that signs a usable key file: without them `inbound serve` does not start and a
        reload keeps the rules in force."""
        issues: list[tuple[tuple[str | int, ...], str]] = []
        if (problem := self.key_problem()) is not None:
            issues.append((("dkim", "key_file"), problem))
        if self.via != "relay" or self.mode == "rewrite":
            return issues
        try:
            keys = SrsKeys.from_env(env)
        except InputError as exc:
            issues.append((("srs_domain",), str(exc)))
            return issues
        if keys is None:
            issues.append(
                (
                    ("srs_domain",),
                    f"forwards with SRS (via: relay, from_mode: {self.mode}) and {SECRETS_ENV} "
                    "is not set: set it to one or more secrets, comma separated",
                )
            )
        return issues

    def key_problem(self) -> str | None:
        """Why the `dkim:` key file cannot sign (unreadable, no key), or None: every forward of
        the rule would fail, so `inbound check` and `inbound serve`'s start refuse it."""
        if self.dkim is None:
            return None
        try:
            load_key(Path(self.dkim.key_file))
        except DkimKeyError as exc:
            return str(exc)
        return None

    def plan_forward(
        self,
        *,
        recipients: Sequence[str],
        patterns: Sequence[str],
        mail_from: str,
        content: bytes | None,
        verdicts: Verdicts,
        dmarc_published: DmarcPolicy | None,
        hostname: str,
        srs_keys: SrsKeys | None,
        now: datetime,
    ) -> ForwardPlan:
        """The forward of one message; `content` None: not known (no loop check)."""
        destinations = tuple(expand_destinations(self.to, recipients, patterns))
        mode, why = choose_mode(self.mode, verdicts, dmarc_published)
        sender = self.envelope_sender(mode, mail_from, srs_keys, now)
        looping = loop_reason(content, hostname) if content is not None else None
        return ForwardPlan(destinations, mode, why, sender, looping)

    def envelope_sender(
        self, mode: Mode, mail_from: str, keys: SrsKeys | None, now: datetime
    ) -> str:
        """MAIL FROM of the forward: <> stays <>; rewrite: from_address; preserve: SRS."""
        if not mail_from:
            return ""  # never rewrite the null sender: a bounce must not bounce
        if mode == "rewrite" or self.srs_domain is None:
            return self.from_address or mail_from
        if keys is None:  # `inbound evaluate` without INBOUND_SRS_SECRETS: the shape only
            local, _, domain = mail_from.rpartition("@")
            return f"SRS0=HASH=TT={domain}={local}@{self.srs_domain}"
        return srs_forward(mail_from, self.srs_domain, keys, now)

    async def parts(self, ctx: ActionContext, services: Services) -> Parts:
        hostname = self.identity(ctx.hostname)
        try:
            keys = SrsKeys.from_env(os.environ)
        except InputError as exc:  # `serve` refuses to start with it; a Lambda may not
            raise PermanentActionError(str(exc)) from None
        plan = self.plan_forward(
            recipients=ctx.recipients,
            patterns=ctx.patterns,
            mail_from=ctx.mail_from,
            content=ctx.content,
            verdicts=ctx.verdicts,
            dmarc_published=ctx.dmarc_published,
            hostname=hostname,
            srs_keys=keys,
            now=datetime.now(UTC),
        )
        if plan.not_forwarded is not None:
            emit(log, "forward.not_forwarded", message_id=ctx.message_id, reason=plan.not_forwarded)
            return Parts((), _nothing, Outcome(detail=f"not forwarded: {plan.not_forwarded}"))
        if plan.mode == "preserve" and ctx.mail_from and self.via == "relay" and keys is None:
            raise PermanentActionError("INBOUND_SRS_SECRETS is not set: cannot sign the SRS sender")
        outbound = services.outbound if self.via == "relay" else services.ses_outbound
        key = self.signing_key()
        built = {
            d.recipient: self.build(ctx.content, plan.mode, d.recipient, hostname, key)
            for d in plan.destinations
        }
        cap = SES_MAX_BYTES if self.via == "ses" else await outbound.max_size()
        largest = max((len(c) for c in built.values()), default=0)
        if cap is not None and largest > cap:
            reason = f"{largest} bytes, over the {cap} bytes via {self.via} accepts"
            emit(log, "forward.oversize", message_id=ctx.message_id, size=largest, limit=cap)
            if self.on_oversize == "bounce" and ctx.mail_from:
                message = f"Message too large to forward ({reason})"
                await services.mailer.send_bounce(ctx.bounce("552", "5.3.4", message, ""))
                return Parts((), _nothing, Outcome(detail=f"bounced: {reason}"))
            return Parts((), _nothing, Outcome(detail=f"dropped: {reason}"))
        by_address = {d.address: d for d in plan.destinations}

        async def send(address: str) -> str | None:
            destination = by_address[address]
            # The same number on every retry, apart for every forward of the message.
            index = (ctx.step.rule * 100 + ctx.step.action) * 1000 + list(by_address).index(address)
            await outbound.send(
                OutboundMail(
                    plan.envelope_sender,
                    (address,),
                    built[destination.recipient],
                    ctx.message_id,
                    index,
                )
            )
            return f"{plan.mode}: {address}"

        count = len(plan.destinations)
        detail = f"forwarded ({plan.mode}: {plan.why}) to {count} destination{'s' * (count != 1)}"
        return Parts(tuple(by_address), send, Outcome(detail=detail))

    def identity(self, hostname: str | None) -> str:
        """The name in `X-Inbound-Forwarded`: the receiver's host name; on the SES side, which
        has none, the domain this forward sends as."""
        if hostname:
            return hostname
        return self.srs_domain or (self.from_address or "localhost").rpartition("@")[2]

    def signing_key(self) -> SigningKey | None:
        """The `dkim:` key (read on each attempt: a rotated file takes effect at once)."""
        if self.dkim is None:
            return None
        try:
            return load_key(Path(self.dkim.key_file))
        except DkimKeyError as exc:
            raise PermanentActionError(str(exc)) from None

    def build(
        self, content: bytes, mode: Mode, recipient: str, hostname: str, key: SigningKey | None
    ) -> bytes:
        """The bytes sent for `recipient`'s forward: header edits, loop marker, signature."""
        if mode == "rewrite":
            assert self.from_address is not None  # the model requires it unless preserve
            content = rewrite(content, from_address=self.from_address, recipient=recipient)
        content = mark_forwarded(content, hostname)
        if self.dkim is None or key is None:
            return content
        try:
            return sign(content, domain=self.dkim.domain, selector=self.dkim.selector, key=key)
        except DkimSignError as exc:
            raise PermanentActionError(str(exc)) from None


async def _nothing(_name: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class PlannedForward:
    """A forward step of a plan, as `inbound evaluate` shows it and `inbound test` checks it."""

    rule: str
    index: int  # the action's position in its rule
    forward: ForwardPlan


def planned_forwards(
    plan: Plan,
    patterns_of: Callable[[int], Sequence[str]],
    *,
    mail_from: str | None,
    srs_keys: SrsKeys | None = None,
    now: datetime | None = None,
) -> list[PlannedForward]:
    """Every forward step `plan` reached, in order, with what it would send (`patterns_of`:
    the recipient patterns of the rule at a position; `mail_from` None: not known)."""
    out: list[PlannedForward] = []
    for run in plan.rules:
        for step in run.actions:
            action = step.action
            if not isinstance(action, ForwardAction):
                continue
            forward = action.plan_forward(
                recipients=run.recipients,
                patterns=patterns_of(run.index),
                mail_from=mail_from or "",
                content=None,
                verdicts=plan.verdicts,
                dmarc_published=None,
                hostname="",
                srs_keys=srs_keys,
                now=now or datetime.now(UTC),
            )
            out.append(PlannedForward(run.name, step.index, forward))
    return out
