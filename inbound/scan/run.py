"""All verdicts of one message, concurrently: virus, spam, and SPF/DKIM/DMARC (SPEC section 2).

Spam and virus run only when a matching rule asks (`scanning`); SPF, DKIM and DMARC always.
A scanner that is not configured, down, or slow gives PROCESSING_FAILED: the message is
accepted and dispatched all the same, and nothing here raises.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass, field

from inbound.core.envelope import Connection, Envelope
from inbound.core.ports import MessageSource
from inbound.core.verdicts import Verdict, Verdicts
from inbound.message.headers import AuthDetails
from inbound.scan.auth import authenticate
from inbound.scan.dns import Resolver
from inbound.scan.result import Scanner, ScanResult

_NOT_CONFIGURED = ScanResult(Verdict.PROCESSING_FAILED, "no scanner configured")
_NOT_ASKED = ScanResult(Verdict.DISABLED, "no matching rule has scan_enabled")


@dataclass(frozen=True, slots=True)
class ScanOutcome:
    verdicts: Verdicts
    auth: AuthDetails = field(default_factory=AuthDetails)
    virus_detail: str = ""
    spam_detail: str = ""


@dataclass
class Scanners:
    """The configured scanners and the resolver; `None` scanners are not configured."""

    resolver: Resolver
    virus: Scanner | None = None
    spam: Scanner | None = None
    auth_timeout: float = 10.0
    # SPF's thread waits there for each DNS answer: give it a pool of its own.
    auth_executor: Executor | None = None

    async def scan(
        self, source: MessageSource, *, scanning: bool, connection: Connection, envelope: Envelope
    ) -> ScanOutcome:
        virus, spam, auth = await asyncio.gather(
            self._run(self.virus, source, scanning),
            self._run(self.spam, source, scanning),
            authenticate(
                source,
                client_ip=connection.client_ip,
                helo=connection.helo,
                mail_from=envelope.mail_from,
                resolver=self.resolver,
                timeout=self.auth_timeout,
                executor=self.auth_executor,
            ),
        )
        verdicts = auth.apply_to(Verdicts(spam=spam.verdict, virus=virus.verdict))
        return ScanOutcome(verdicts, auth.details, virus.detail, spam.detail)

    @staticmethod
    async def _run(scanner: Scanner | None, source: MessageSource, scanning: bool) -> ScanResult:
        if not scanning:
            return _NOT_ASKED
        if scanner is None:
            return _NOT_CONFIGURED
        return await scanner.scan(source)
