"""Verdicts with SES's names: five statuses per check, plus the DMARC policy on failure."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    PASS = "PASS"  # noqa: S105 - a verdict, not a password
    FAIL = "FAIL"
    GRAY = "GRAY"
    PROCESSING_FAILED = "PROCESSING_FAILED"
    DISABLED = "DISABLED"


class DmarcPolicy(StrEnum):
    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"


VERDICT_KINDS = ("spam", "virus", "spf", "dkim", "dmarc")


@dataclass(frozen=True, slots=True)
class Verdicts:
    """The verdicts of one message, as SES reports them in `receipt.*Verdict`."""

    spam: Verdict = Verdict.DISABLED
    virus: Verdict = Verdict.DISABLED
    spf: Verdict = Verdict.GRAY
    dkim: Verdict = Verdict.GRAY
    dmarc: Verdict = Verdict.GRAY
    # SES sets dmarcPolicy only when DMARC fails.
    dmarc_policy: DmarcPolicy | None = None

    def of(self, kind: str) -> Verdict:
        value: Verdict = getattr(self, kind)
        return value

    def as_json(self) -> dict[str, str]:
        return {kind: self.of(kind).value for kind in VERDICT_KINDS}
