"""SPF, DKIM and DMARC for one message: SES's verdicts and the RFC 8601 words of our headers.

This module owns turning the checks' results into SES verdicts (ses-receiving.md §5.1) and the
DMARC result (RFC 7489); the checks are `spf_check` (pyspf) and `message_checks` (dkimpy, and
the DMARC policies of the From domains). Every DNS question goes through one `Resolver`; the
blocking libraries run in worker threads; `authenticate` ends within `timeout` and never
raises: what could not be finished in time is PROCESSING_FAILED (SPEC §2).

SES mappings (GRAY = "no policy" / "not signed", PROCESSING_FAILED = "could not complete"):
- SPF (RFC 7208 §2.6): pass→PASS; fail→FAIL; softfail→FAIL (the domain publishes a policy and
  it does not authorize the host, so it is no GRAY case; the Received-SPF word stays
  `softfail`); neutral→GRAY (real SES data; "no assertion", RFC 7208 §8.2); none→GRAY (SES: no
  SPF policy); temperror→PROCESSING_FAILED; permerror→FAIL (a published but broken policy
  authenticates nobody, and retrying cannot change it, RFC 7208 §2.6.7).
- DKIM (RFC 6376 §6.1, every signature verified and reported): only signatures whose d= is
  aligned (relaxed, RFC 7489 §3.1.1) with the From domain count for the verdict, as in the SES
  DG's Received example, where a passing d=amazonses.com signature on mail From example.com
  gives dkimVerdict GRAY. None of those → GRAY; any pass → PASS; else any temperror →
  PROCESSING_FAILED; else FAIL. Without a From domain every signature counts.
- DMARC (RFC 7489 §6.6): no policy record → GRAY (`dmarc=none`, as SES writes); an aligned SPF
  or DKIM pass → PASS; else FAIL with `dmarc_policy` = p=, or sp= when the record was found at
  the organizational domain of a subdomain; a DNS temporary failure, or a missing pass that a
  temporary failure of an aligned identifier may hide → PROCESSING_FAILED. pct= is not applied:
  SES reports the verdict and the policy and leaves the action to the rules.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv6Address

from inbound.core.ports import MessageSource
from inbound.core.verdicts import DmarcPolicy, Verdict, Verdicts
from inbound.message.headers import AuthDetails
from inbound.scan.checkrun import CheckRun, Deadline
from inbound.scan.dmarc import DmarcResult, dmarc_one
from inbound.scan.dns import Resolver
from inbound.scan.message_checks import MessageChecks, check_message, dkim_verdict
from inbound.scan.spf_check import SpfResult, check_spf

SPF_VERDICTS: dict[str, Verdict] = {
    "pass": Verdict.PASS,
    "fail": Verdict.FAIL,
    "softfail": Verdict.FAIL,
    "neutral": Verdict.GRAY,
    "none": Verdict.GRAY,
    "temperror": Verdict.PROCESSING_FAILED,
    "permerror": Verdict.FAIL,
}


@dataclass(frozen=True, slots=True)
class AuthOutcome:
    """The three authentication verdicts of one message and the details for its headers."""

    spf: Verdict
    dkim: Verdict
    dmarc: Verdict
    dmarc_policy: DmarcPolicy | None  # set only when DMARC fails (SES `dmarcPolicy`)
    details: AuthDetails

    def apply_to(self, verdicts: Verdicts) -> Verdicts:
        """`verdicts` with spf, dkim, dmarc and dmarc_policy taken from this outcome."""
        return replace(
            verdicts,
            spf=self.spf,
            dkim=self.dkim,
            dmarc=self.dmarc,
            dmarc_policy=self.dmarc_policy,
        )


async def authenticate(
    raw: bytes | MessageSource,
    *,
    client_ip: IPv4Address | IPv6Address | str,
    helo: str,
    mail_from: str,
    resolver: Resolver,
    timeout: float,
    executor: Executor | None = None,
) -> AuthOutcome:
    """SPF for (client_ip, mail_from or HELO for <>), DKIM of every signature, DMARC.

    `mail_from` is the reverse path without angle brackets ("" for the null sender). Ends within
    `timeout` seconds; never raises. pyspf and dkimpy run on `executor` (the loop's default one
    if None); SPF's thread waits there for each DNS answer, so a receiver should give this
    check a pool of its own rather than let it crowd the default one.
    """
    run = CheckRun(resolver, Deadline(timeout), executor)
    spf_result, checks = await asyncio.gather(
        check_spf(str(client_ip), helo, mail_from, run),
        check_message(raw, run),
    )
    dmarc = _dmarc(checks, spf_result)
    return AuthOutcome(
        spf=SPF_VERDICTS.get(spf_result.result, Verdict.PROCESSING_FAILED),
        dkim=dkim_verdict(checks.dkim, checks.from_domains),
        dmarc=dmarc.verdict,
        dmarc_policy=dmarc.policy if dmarc.verdict is Verdict.FAIL else None,
        details=AuthDetails(
            spf=spf_result.result,
            spf_explanation=spf_result.explanation,
            dkim=checks.dkim or (),
            dmarc=dmarc.word,
            from_domain=dmarc.from_domain,
            dmarc_policy=dmarc.published.value if dmarc.published is not None else "",
        ),
    )


# --- DMARC ----------------------------------------------------------------------------------


def _dmarc(checks: MessageChecks, spf_result: SpfResult) -> DmarcResult:
    """The DMARC result; with several From domains (RFC 7489 §6.6.1) the worst of theirs."""
    if checks.dkim is None:
        return DmarcResult("temperror", Verdict.PROCESSING_FAILED)
    if not checks.from_domains:
        return DmarcResult("none", Verdict.GRAY)
    results = [
        dmarc_one(
            domain, checks.policies[domain], spf_result.domain, spf_result.result, checks.dkim
        )
        for domain in checks.from_domains
    ]
    return min(results, key=DmarcResult.severity)
