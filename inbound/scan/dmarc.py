"""DMARC (RFC 7489): policy records, discovery, identifier alignment, and the result.

Pure but for `discover`, which asks the one `Resolver`. The organizational domain is the last
two labels (no public suffix list): exact under a TLD, too loose under `co.uk`-like suffixes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from inbound.core.verdicts import DmarcPolicy, Verdict
from inbound.message.headers import DkimResult
from inbound.scan.dns import DnsTemporaryError, Resolver

_POLICY_ORDER = (DmarcPolicy.NONE, DmarcPolicy.QUARANTINE, DmarcPolicy.REJECT)


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """The tags of a DMARC policy record that decide the verdict (RFC 7489 §6.3)."""

    policy: DmarcPolicy
    subdomain_policy: DmarcPolicy | None = None
    strict_spf: bool = False
    strict_dkim: bool = False


def organizational_domain(domain: str) -> str:
    """The last two labels of `domain` (RFC 7489 §3.2 without the public suffix list).

    A heuristic: for names under a multi-label public suffix (`example.co.uk`) it answers the
    suffix (`co.uk`), so relaxed alignment is looser there and the sp= fallback looks one level
    too high. Exact for domains directly under a TLD.
    """
    labels = normal_domain(domain).split(".")
    return ".".join(labels[-2:])


def aligned(identifier: str, from_domain: str, *, strict: bool) -> bool:
    """Identifier alignment (RFC 7489 §3.1): equal names, or equal organizational domains."""
    left, right = normal_domain(identifier), normal_domain(from_domain)
    if not left or not right:
        return False
    if strict:
        return left == right
    return organizational_domain(left) == organizational_domain(right)


def parse_dmarc_record(text: str) -> DmarcRecord | None:
    """A DMARC record (RFC 7489 §6.4), or None if `text` is not one DMARC can apply."""
    tags: dict[str, str] = {}
    for number, spec in enumerate(part.strip() for part in text.split(";")):
        name, equals, value = spec.partition("=")
        name, value = name.strip().lower(), value.strip()
        if number == 0 and (name != "v" or value.upper() != "DMARC1"):
            return None  # §6.6.3 step 2: v=DMARC1 must come first
        if equals and name not in tags:
            tags[name] = value
    policy = _policy(tags.get("p", ""))
    if policy is None:
        # §6.6.3 step 6: with a bad p= but a reporting address, act as if p=none.
        if not tags.get("rua"):
            return None
        policy = DmarcPolicy.NONE
    return DmarcRecord(
        policy=policy,
        subdomain_policy=_policy(tags.get("sp", "")),
        strict_spf=tags.get("aspf", "r").lower() == "s",
        strict_dkim=tags.get("adkim", "r").lower() == "s",
    )


@dataclass(frozen=True, slots=True)
class Discovery:
    record: DmarcRecord | None = None
    found_at: str = ""
    temporary_error: bool = False


async def discover(resolver: Resolver, from_domain: str) -> Discovery:
    """RFC 7489 §6.6.3: the From domain's record, else the organizational domain's."""
    try:
        records = _dmarc_texts(await resolver.txt(f"_dmarc.{from_domain}"))
        if len(records) == 1:
            return Discovery(parse_dmarc_record(records[0]), from_domain)
        organizational = organizational_domain(from_domain)
        if records or organizational == from_domain:
            return Discovery()  # several records: no DMARC processing (step 3)
        records = _dmarc_texts(await resolver.txt(f"_dmarc.{organizational}"))
    except DnsTemporaryError:
        return Discovery(temporary_error=True)
    if len(records) == 1:
        return Discovery(parse_dmarc_record(records[0]), organizational)
    return Discovery()


def _dmarc_texts(texts: list[str]) -> list[str]:
    return [t for t in texts if re.match(r"\s*v\s*=\s*DMARC1\s*(;|$)", t, re.IGNORECASE)]


@dataclass(frozen=True, slots=True)
class DmarcResult:
    word: str  # RFC 8601 §2.7.x dmarc result
    verdict: Verdict
    policy: DmarcPolicy | None = None
    from_domain: str = ""
    # The policy the From domain publishes (sp= applied), whatever the result: a forward
    # needs it when DMARC passed on SPF alone (SPEC 3b, `when_dmarc`). None: no record.
    published: DmarcPolicy | None = None

    def severity(self) -> tuple[int, int]:
        """Lower is worse: FAIL before PROCESSING_FAILED before GRAY before PASS; reject first."""
        order = (Verdict.FAIL, Verdict.PROCESSING_FAILED, Verdict.GRAY, Verdict.PASS)
        strictness = _POLICY_ORDER.index(self.policy) if self.policy else 0
        return order.index(self.verdict), -strictness


def dmarc_one(
    from_domain: str,
    discovery: Discovery,
    spf_domain: str,
    spf_word: str,
    dkim_results: tuple[DkimResult, ...],
) -> DmarcResult:
    """The DMARC result for one From domain, given SPF's domain and RFC 8601 word and the
    results of every DKIM signature."""
    if discovery.temporary_error:
        return DmarcResult("temperror", Verdict.PROCESSING_FAILED, None, from_domain)
    record = discovery.record
    if record is None:
        return DmarcResult("none", Verdict.GRAY, None, from_domain)
    policy = record.policy
    if discovery.found_at != from_domain and record.subdomain_policy is not None:
        policy = record.subdomain_policy  # RFC 7489 §6.3 sp=
    spf_aligned = aligned(spf_domain, from_domain, strict=record.strict_spf)
    dkim_aligned = [
        r for r in dkim_results if aligned(r.domain, from_domain, strict=record.strict_dkim)
    ]
    if (spf_aligned and spf_word == "pass") or any(r.result == "pass" for r in dkim_aligned):
        return DmarcResult("pass", Verdict.PASS, None, from_domain, policy)
    if (spf_aligned and spf_word == "temperror") or any(
        r.result == "temperror" for r in dkim_aligned
    ):
        return DmarcResult("temperror", Verdict.PROCESSING_FAILED, None, from_domain, policy)
    return DmarcResult("fail", Verdict.FAIL, policy, from_domain, policy)


def aligned_any(domain: str, from_domains: tuple[str, ...]) -> bool:
    return any(aligned(domain, f, strict=False) for f in from_domains)


def _policy(value: str) -> DmarcPolicy | None:
    try:
        return DmarcPolicy(value.strip().lower())
    except ValueError:
        return None


def normal_domain(domain: str) -> str:
    return domain.strip().strip("[]").removesuffix(".").lower()
