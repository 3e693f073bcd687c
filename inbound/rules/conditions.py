"""How each `when` / `unless` key (SPEC section 4) compiles: its patterns into one or more checks.

A `Check` tests the message's facts and can describe what it saw, for the trace. The condition
table (`inbound.rules.condition_table`) names these compilers row by row; nothing here knows the
list of keys. Pattern matching is case-insensitive, like recipient matching. `re:` is searched
in `subject` and `header` values (SPEC section 4) and matched whole against addresses and
attachment names; globs and plain values are always whole-value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import ip_network

from inbound.core.envelope import Connection, Envelope
from inbound.core.message import MessageFacts
from inbound.core.verdicts import DmarcPolicy, Verdict, Verdicts
from inbound.rules.match import address_predicate, compile_scanned, is_scanned_pattern
from inbound.rules.model import AttachmentMatch, SizeRange


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


TextTest = Callable[[str], bool]


def any_text(patterns: Sequence[str], *, search: bool) -> TextTest:
    """Whether a value matches any of `patterns`: a plain value equal to the whole value, a glob
    over the whole value, or `re:PATTERN`, searched in the value when `search` (SPEC section 4:
    as Postfix `header_checks`, Sieve `:regex` and Mailgun's `match_header` do; `^...$`
    anchors) and else matched against the whole value."""
    exact = {p.lower() for p in patterns if not is_scanned_pattern(p)}
    matchers = [
        regex.search if search and p.startswith("re:") else regex.fullmatch
        for p in patterns
        if is_scanned_pattern(p)
        for regex in (compile_scanned(p),)
    ]

    def test(value: str) -> bool:
        return value.lower() in exact or any(m(value) is not None for m in matchers)

    return test


def any_address(patterns: Sequence[str]) -> TextTest:
    """Whether an address matches any of `patterns`, in the forms of recipient patterns (SPEC
    section 2): always the whole address, `re:` included."""
    predicates = [address_predicate(p) for p in patterns]
    return lambda address: any(p(address) for p in predicates)


# -- the compilers: (key, the YAML value) -> checks ---------------------------------------------


def sender(key: str, patterns: list[str]) -> tuple[Check, ...]:
    test = any_address(patterns)
    return (
        Check(key, lambda f: test(f.envelope.mail_from), lambda f: f.envelope.mail_from or "<>"),
    )


def from_(key: str, patterns: list[str]) -> tuple[Check, ...]:
    test = any_address(patterns)
    return (
        Check(
            key,
            lambda f: any(test(a) for a in f.message.from_addresses),
            lambda f: ", ".join(f.message.from_addresses) or "no From address",
        ),
    )


def subject(key: str, patterns: list[str]) -> tuple[Check, ...]:
    test = any_text(patterns, search=True)
    return (
        Check(
            key,
            lambda f: f.message.subject is not None and test(f.message.subject),
            lambda f: repr(f.message.subject) if f.message.subject is not None else "no Subject",
        ),
    )


def header(key: str, by_name: dict[str, list[str]]) -> tuple[Check, ...]:
    """One check per header name: each must hold (in `when`) or blocks (in `unless`)."""
    return tuple(_header_check(f"{key} {name}", name, p) for name, p in by_name.items())


def _header_check(label: str, name: str, patterns: list[str]) -> Check:
    test = any_text(patterns, search=True)
    return Check(
        label,
        lambda f: any(test(v) for v in f.message.header_values(name)),
        lambda f: ", ".join(repr(v) for v in f.message.header_values(name)) or f"no {name}",
    )


def size(key: str, limits: SizeRange) -> tuple[Check, ...]:
    low, high = limits.min or 0, limits.max
    return (
        Check(
            key,
            lambda f: f.message.size >= low and (high is None or f.message.size <= high),
            lambda f: f"{f.message.size} bytes",
        ),
    )


def client_ip(key: str, cidrs: list[str]) -> tuple[Check, ...]:
    networks = [ip_network(cidr, strict=False) for cidr in cidrs]
    return (
        Check(
            key,
            lambda f: any(f.connection.client_ip in n for n in networks),
            lambda f: str(f.connection.client_ip),
        ),
    )


def tls(key: str, wanted: bool) -> tuple[Check, ...]:
    return (
        Check(
            key,
            lambda f: f.connection.tls is wanted,
            lambda f: "TLS" if f.connection.tls else "no TLS",
        ),
    )


def verdict(key: str, statuses: list[Verdict]) -> tuple[Check, ...]:
    """The verdict named `key` (spam, virus, spf, dkim, dmarc) is one of `statuses`."""
    wanted = frozenset(statuses)
    return (
        Check(
            key,
            lambda f: f.verdicts.of(key) in wanted,
            lambda f: f"{key}={f.verdicts.of(key).value}",
        ),
    )


def dmarc_policy(key: str, policies: list[DmarcPolicy]) -> tuple[Check, ...]:
    wanted = frozenset(policies)
    return (
        Check(
            key,
            lambda f: f.verdicts.dmarc_policy in wanted,
            lambda f: (
                f.verdicts.dmarc_policy.value if f.verdicts.dmarc_policy else "no DMARC policy"
            ),
        ),
    )


def attachment(key: str, match: AttachmentMatch) -> tuple[Check, ...]:
    """Any attachment whose filename and content type both match (on the same part); names and
    types are matched whole, `re:` included."""
    name_test = any_text([match.filename], search=False) if match.filename else None
    type_test = any_text([match.content_type], search=False) if match.content_type else None

    def test(f: Facts) -> bool:
        return any(
            (name_test is None or (a.filename is not None and name_test(a.filename)))
            and (type_test is None or type_test(a.content_type))
            for a in f.message.attachments
        )

    def seen(f: Facts) -> str:
        shown = [f"{a.filename or '(no name)'} ({a.content_type})" for a in f.message.attachments]
        return ", ".join(shown) or "no attachments"

    return (Check(key, test, seen),)


def failing(checks: tuple[Check, ...], facts: Facts) -> list[Check]:
    return [check for check in checks if not check.test(facts)]


def holding(checks: tuple[Check, ...], facts: Facts) -> list[Check]:
    return [check for check in checks if check.test(facts)]
