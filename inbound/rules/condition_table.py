"""The condition table (SPEC section 4): one row per `when` / `unless` key, every facet of it.

A row names the key, how it compiles (a compiler of `inbound.rules.conditions`), what it reads
(`Reads`, which decides how much of a message is read: `inbound.message.read.need_for`) and
how the SES guard Lambda reads it from the SES Lambda event, or why no guard can (`LocalOnly`).
Every key set used elsewhere (message, connection, guard, local only) is a view of a table.
`CONDITIONS` is the table of the `Conditions` model. A table is an immutable value: an
extension or a test builds its own with `extended(...)` and passes it where a table is taken
(`CompiledRuleSet.build`, `ses_problems`, `guard_facts`); nothing registers itself on import.
Adding a condition: its field on `Conditions`, its compiler, its row here (tests check they agree).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import Any, Generic, TypeVar

from inbound.core.errors import InboundError
from inbound.core.message import Reads
from inbound.core.verdicts import VERDICT_KINDS
from inbound.rules import conditions as c
from inbound.rules.conditions import Check
from inbound.rules.model import Conditions

V = TypeVar("V")


class ConditionTableError(InboundError):
    """A table that contradicts itself or its model (a programming error, found in tests)."""


class EventPart(StrEnum):
    """Where in the SES Lambda event (`Records[0].ses`) the guard Lambda finds a fact."""

    SOURCE = "mail.source"
    # SES passes at most 10 KB of headers and says so (`headersTruncated`): then undecidable.
    HEADERS = "mail.headers"
    # From and Subject survive a truncation in `commonHeaders`.
    HEADERS_OR_COMMON = "mail.headers, else mail.commonHeaders"
    # Only the topmost Received header, the one SES prepends: lower ones could be forged.
    RECEIVED = "the Received header SES prepends"
    RECEIPT = "receipt"


@dataclass(frozen=True, slots=True)
class Guarded:
    """The guard Lambda decides the condition from `part` of the event; `where` says it in
    words (for `inbound check --ses`)."""

    part: EventPart
    where: str


@dataclass(frozen=True, slots=True)
class LocalOnly:
    """No guard can decide the condition: `reason` is what the SES Lambda event lacks."""

    reason: str


@dataclass(frozen=True, slots=True)
class ConditionRow(Generic[V]):
    """One condition key and its facets. `compile` takes the key and the YAML value (as the
    model validated it) and returns the checks that must all hold."""

    key: str
    compile: Callable[[str, V], Sequence[Check]]
    reads: Reads
    ses: Guarded | LocalOnly

    def __post_init__(self) -> None:
        missing = [
            name
            for name, ok in (
                ("key", isinstance(self.key, str) and bool(self.key)),
                ("compile", callable(self.compile)),
                ("reads", isinstance(self.reads, Reads)),
                ("ses", isinstance(self.ses, Guarded | LocalOnly)),
                ("ses.where", not isinstance(self.ses, Guarded) or bool(self.ses.where)),
                ("ses.reason", not isinstance(self.ses, LocalOnly) or bool(self.ses.reason)),
            )
            if not ok
        ]
        if missing:
            raise ConditionTableError(f"condition {self.key!r}: no {', '.join(missing)}")


@dataclass(frozen=True)
class ConditionTable:
    """The rows, in the order their checks run (and the trace lists them)."""

    rows: tuple[ConditionRow[Any], ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for row in self.rows:
            if row.key in seen:
                raise ConditionTableError(f"condition {row.key!r}: two rows")
            seen.add(row.key)

    def extended(self, *rows: ConditionRow[Any]) -> ConditionTable:
        """This table with `rows` appended (for a model that adds their fields)."""
        return ConditionTable((*self.rows, *rows))

    @cached_property
    def _by_key(self) -> Mapping[str, ConditionRow[Any]]:
        return {row.key: row for row in self.rows}

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(row.key for row in self.rows)

    def row(self, key: str) -> ConditionRow[Any]:
        try:
            return self._by_key[key]
        except KeyError:
            raise ConditionTableError(f"condition {key!r} has no row in the table") from None

    def compile(self, conditions: Conditions | None) -> tuple[Check, ...]:
        """The checks of a `when` or `unless` (none when it is absent)."""
        if conditions is None:
            return ()
        return tuple(
            check
            for key, value in conditions.set_conditions().items()
            for check in self.row(key).compile(key, value)
        )

    # -- views ----------------------------------------------------------------------------------

    def reads(self, keys: Iterable[str]) -> frozenset[Reads]:
        """What conditions with these keys read."""
        return frozenset(self.row(key).reads for key in keys)

    def keys_reading(self, reads: Reads) -> frozenset[str]:
        """The keys whose conditions read `reads` (e.g. the connection's facts)."""
        return frozenset(row.key for row in self.rows if row.reads is reads)

    def guard_keys(self) -> dict[str, str]:
        """Key -> where the guard Lambda reads it, for the keys a guard can decide."""
        return {r.key: r.ses.where for r in self.rows if isinstance(r.ses, Guarded)}

    def local_only_keys(self) -> dict[str, str]:
        """Key -> why no guard can decide it, for the others."""
        return {r.key: r.ses.reason for r in self.rows if isinstance(r.ses, LocalOnly)}

    def guard_parts(self, keys: Iterable[str]) -> frozenset[EventPart]:
        """The parts of the SES event the guard must read for conditions with these keys."""
        return frozenset(s.part for key in keys if isinstance(s := self.row(key).ses, Guarded))


def _verdict_row(kind: str) -> ConditionRow[Any]:
    return ConditionRow(
        kind, c.verdict, Reads.VERDICTS, Guarded(EventPart.RECEIPT, f"receipt.{kind}Verdict")
    )


# The rows of the `Conditions` model, in its field order (a unit test holds them together).
CONDITIONS = ConditionTable(
    (
        ConditionRow(
            "sender",
            c.sender,
            Reads.ENVELOPE,
            Guarded(EventPart.SOURCE, "mail.source (the envelope sender)"),
        ),
        ConditionRow(
            "from",
            c.from_,
            Reads.HEADERS,
            Guarded(
                EventPart.HEADERS_OR_COMMON,
                "the From header (mail.headers, else commonHeaders.from)",
            ),
        ),
        ConditionRow(
            "subject",
            c.subject,
            Reads.HEADERS,
            Guarded(
                EventPart.HEADERS_OR_COMMON,
                "the Subject header (mail.headers, else commonHeaders.subject)",
            ),
        ),
        ConditionRow(
            "header",
            c.header,
            Reads.HEADERS,
            Guarded(EventPart.HEADERS, "mail.headers (SES passes at most 10 KB of them)"),
        ),
        ConditionRow(
            "size",
            c.size,
            Reads.SIZE,
            LocalOnly("the SES Lambda event does not give the message size"),
        ),
        ConditionRow(
            "client_ip",
            c.client_ip,
            Reads.CONNECTION,
            Guarded(EventPart.RECEIVED, "the client IP in the Received header SES prepends"),
        ),
        ConditionRow(
            "tls",
            c.tls,
            Reads.CONNECTION,
            LocalOnly("the SES Lambda event does not say whether the session used TLS"),
        ),
        *(_verdict_row(kind) for kind in VERDICT_KINDS),
        ConditionRow(
            "dmarc_policy",
            c.dmarc_policy,
            Reads.VERDICTS,
            Guarded(EventPart.RECEIPT, "receipt.dmarcPolicy"),
        ),
        ConditionRow(
            "attachment",
            c.attachment,
            Reads.PARTS,
            LocalOnly("the SES Lambda event carries no message body"),
        ),
    )
)
