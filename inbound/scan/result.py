"""What a scanner says about one message: a verdict and a reason people can read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from inbound.core.errors import InboundError
from inbound.core.ports import MessageSource
from inbound.core.verdicts import Verdict


@dataclass(frozen=True, slots=True)
class ScanResult:
    """A verdict (SES's names) and its detail: the signature found, the score, or the failure.

    `detail` goes into logs and traces; it never contains message content.
    """

    verdict: Verdict
    detail: str


class DaemonError(InboundError):
    """A daemon did not answer as its protocol says (raised by `ping`; `scan` never raises)."""


class Scanner(Protocol):
    """A spam or virus scanner: one call per message, never raises for a daemon's failure."""

    async def scan(self, source: MessageSource) -> ScanResult: ...
