"""`when` / `unless` (SPEC section 4) compiled once into checks over the message's facts.

Each condition key becomes one `Check`; `when` holds if every check holds, `unless` blocks a
rule if any holds. A check can describe what it saw, for the trace. Pattern matching is
case-insensitive, like recipient matching.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import ip_network

from inbound.core.envelope import Connection, Envelope
from inbound.core.message import MessageFacts
from inbound.core.verdicts import VERDICT_KINDS, Verdicts
from inbound.rules.match import address_predicate, compile_scanned
from inbound.rules.model import Conditions


@dataclass(frozen=True, slots=True)
class Facts:
    connection: Connection
    envelope: Envelope
    message: MessageFacts
    verdicts: Verdicts


@dataclass(frozen=True, slots=True)
class Check:
    key: str
    test: Callable[[Facts], bool]
    # What the message had, for "why did this rule not match".
    seen: Callable[[Facts], str]


def _any_text(patterns: list[str]) -> Callable[[str], bool]:
    compiled = [
        compile_scanned(p) if ("*" in p or "?" in p or p.startswith("re:")) else None
        for p in patterns
    ]
    exact = {p.lower() for p, c in zip(patterns, compiled, strict=True) if c is None}
    regexes = [c for c in compiled if c is not None]

    def test(value: str) -> bool:
        return value.lower() in exact or any(r.fullmatch(value) for r in regexes)

    return test


def _any_address(patterns: list[str]) -> Callable[[str], bool]:
    predicates = [address_predicate(p) for p in patterns]
    return lambda address: any(p(address) for p in predicates)


def compile_conditions(conditions: Conditions) -> tuple[Check, ...]:
    checks: list[Check] = []
    c = conditions
    if c.sender is not None:
        sender = _any_address(c.sender)
        checks.append(
            Check(
                "sender",
                lambda f: sender(f.envelope.mail_from),
                lambda f: f.envelope.mail_from or "<>",
            )
        )
    if c.from_ is not None:
        from_ = _any_address(c.from_)
        checks.append(
            Check(
                "from",
                lambda f: any(from_(a) for a in f.message.from_addresses),
                lambda f: ", ".join(f.message.from_addresses) or "no From address",
            )
        )
    if c.subject is not None:
        subject = _any_text(c.subject)
        checks.append(
            Check(
                "subject",
                lambda f: f.message.subject is not None and subject(f.message.subject),
                lambda f: (
                    repr(f.message.subject) if f.message.subject is not None else "no Subject"
                ),
            )
        )
    for name, patterns in (c.header or {}).items():
        checks.append(_header_check(name, patterns))
    if c.size is not None:
        low, high = c.size.min or 0, c.size.max
        checks.append(
            Check(
                "size",
                lambda f: f.message.size >= low and (high is None or f.message.size <= high),
                lambda f: f"{f.message.size} bytes",
            )
        )
    if c.client_ip is not None:
        networks = [ip_network(cidr, strict=False) for cidr in c.client_ip]
        checks.append(
            Check(
                "client_ip",
                lambda f: any(f.connection.client_ip in n for n in networks),
                lambda f: str(f.connection.client_ip),
            )
        )
    if c.tls is not None:
        wanted = c.tls
        checks.append(
            Check(
                "tls",
                lambda f: f.connection.tls is wanted,
                lambda f: "TLS" if f.connection.tls else "no TLS",
            )
        )
    for kind in VERDICT_KINDS:
        statuses = getattr(c, kind)
        if statuses is not None:
            checks.append(_verdict_check(kind, frozenset(statuses)))
    if c.dmarc_policy is not None:
        policies = frozenset(c.dmarc_policy)
        checks.append(
            Check(
                "dmarc_policy",
                lambda f: f.verdicts.dmarc_policy in policies,
                lambda f: (
                    f.verdicts.dmarc_policy.value if f.verdicts.dmarc_policy else "no DMARC policy"
                ),
            )
        )
    if c.attachment is not None:
        checks.append(_attachment_check(c.attachment.filename, c.attachment.content_type))
    return tuple(checks)


def _header_check(name: str, patterns: list[str]) -> Check:
    test = _any_text(patterns)
    return Check(
        f"header {name}",
        lambda f: any(test(v) for v in f.message.header_values(name)),
        lambda f: ", ".join(repr(v) for v in f.message.header_values(name)) or f"no {name}",
    )


def _verdict_check(kind: str, statuses: frozenset[object]) -> Check:
    return Check(
        kind,
        lambda f: f.verdicts.of(kind) in statuses,
        lambda f: f"{kind}={f.verdicts.of(kind).value}",
    )


def _attachment_check(filename: str | None, content_type: str | None) -> Check:
    name_test = _any_text([filename]) if filename else None
    type_test = _any_text([content_type]) if content_type else None

    def test(f: Facts) -> bool:
        return any(
            (name_test is None or (a.filename is not None and name_test(a.filename)))
            and (type_test is None or type_test(a.content_type))
            for a in f.message.attachments
        )

    def seen(f: Facts) -> str:
        shown = [f"{a.filename or '(no name)'} ({a.content_type})" for a in f.message.attachments]
        return ", ".join(shown) or "no attachments"

    return Check("attachment", test, seen)


def failing(checks: tuple[Check, ...], facts: Facts) -> list[Check]:
    return [check for check in checks if not check.test(facts)]


def holding(checks: tuple[Check, ...], facts: Facts) -> list[Check]:
    return [check for check in checks if check.test(facts)]
