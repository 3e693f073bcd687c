"""SPF, DKIM and DMARC for one message: SES's verdicts and the RFC 8601 words of our headers.

This module owns turning pyspf's and dkimpy's results into SES verdicts (ses-receiving.md §5.1)
and DMARC policy discovery and alignment (RFC 7489). Every DNS question goes through one
`Resolver`; the blocking libraries run in worker threads; `authenticate` ends within `timeout`
and never raises: what could not be finished in time is PROCESSING_FAILED (SPEC §2).

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
import binascii
import logging
import re
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import CancelledError, Executor
from dataclasses import dataclass, field, replace
from functools import partial
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any, TypeVar

import dkim
import spf

from inbound.core.verdicts import DmarcPolicy, Verdict, Verdicts
from inbound.message.headers import AuthDetails, DkimResult
from inbound.message.parse import parse_message
from inbound.observe.log import emit
from inbound.scan.dmarc import (
    Discovery,
    DmarcResult,
    aligned_any,
    discover,
    dmarc_one,
    normal_domain,
)
from inbound.scan.dns import DnsTemporaryError, DnsTimeoutError, Resolver

_LOG = logging.getLogger("inbound.scan.auth")
_T = TypeVar("_T")

SPF_VERDICTS: dict[str, Verdict] = {
    "pass": Verdict.PASS,
    "fail": Verdict.FAIL,
    "softfail": Verdict.FAIL,
    "neutral": Verdict.GRAY,
    "none": Verdict.GRAY,
    "temperror": Verdict.PROCESSING_FAILED,
    "permerror": Verdict.FAIL,
}
_DKIM_HEADER = re.compile(rb"^dkim-signature[ \t]*:", re.IGNORECASE | re.MULTILINE)


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
    raw: bytes | Path,
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
    run = _Run(resolver, _Deadline(timeout), executor)
    spf_result, checks = await asyncio.gather(
        _check_spf(str(client_ip), helo, mail_from, run),
        _check_message(raw, run),
    )
    dmarc = _dmarc(checks, spf_result)
    return AuthOutcome(
        spf=SPF_VERDICTS.get(spf_result.result, Verdict.PROCESSING_FAILED),
        dkim=_dkim_verdict(checks.dkim, checks.from_domains),
        dmarc=dmarc.verdict,
        dmarc_policy=dmarc.policy if dmarc.verdict is Verdict.FAIL else None,
        details=AuthDetails(
            spf=spf_result.result,
            spf_explanation=spf_result.explanation,
            dkim=checks.dkim or (),
            dmarc=dmarc.word,
            from_domain=dmarc.from_domain,
        ),
    )


# --- SPF ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _SpfResult:
    result: str  # RFC 7208 §2.6 word
    explanation: str
    domain: str  # the checked identity's domain: MAIL FROM's, or HELO for <> (RFC 7208 §2.4)


async def _check_spf(client_ip: str, helo: str, mail_from: str, run: _Run) -> _SpfResult:
    domain = normal_domain(mail_from.rpartition("@")[2] if mail_from else helo)
    try:
        ip = str(ip_address(client_ip))
    except ValueError:
        return _SpfResult("temperror", f"no client IP address to check {domain} with", domain)
    if not domain:
        return _SpfResult("none", "no MAIL FROM or HELO domain to check", domain)
    bridge = _Bridge(asyncio.get_running_loop(), run.deadline)
    try:
        async with asyncio.timeout(run.deadline.remaining()):
            return await run.in_thread(_run_spf, bridge, run.resolver, ip, mail_from, helo)
    except TimeoutError:
        emit(_LOG, "auth.timed_out", check="spf")
        return _SpfResult("temperror", "SPF check timed out", domain)
    except Exception as exc:  # a library bug must not lose the message (SPEC §2)
        emit(_LOG, "auth.failed", level=logging.WARNING, check="spf", error=type(exc).__name__)
        return _SpfResult("temperror", "SPF check failed", domain)


def _run_spf(bridge: _Bridge, resolver: Resolver, ip: str, mail_from: str, helo: str) -> _SpfResult:
    query = _SpfQuery(bridge, resolver, ip=ip, mail_from=mail_from, helo=helo)
    result, _code, _text = query.check()
    return _SpfResult(str(result), str(query.get_header_comment(result)), normal_domain(query.o))


class _SpfQuery(spf.query):  # type: ignore[misc]  # pyspf has no type hints
    """pyspf's check with its one door to DNS, `query.dns`, opened onto our resolver.

    pyspf otherwise calls a module-level lookup (`spf.DNSLookup`); replacing that would be
    process-wide, so this override keeps pyspf's contract instead: lists of TXT string tuples,
    address strings, (preference, name) pairs; void lookups counted (RFC 7208 §4.6.4).
    """

    def __init__(
        self, bridge: _Bridge, resolver: Resolver, *, ip: str, mail_from: str, helo: str
    ) -> None:
        super().__init__(i=ip, s=mail_from, h=helo)
        self._bridge = bridge
        self._resolver = resolver
        self._answers: dict[tuple[str, str], list[Any]] = {}

    def dns(
        self, name: str, qtype: str, cnames: object = None, ignore_void: bool = False
    ) -> list[Any]:
        name = str(name).removesuffix(".").lower()
        if not name or not all(0 < len(label) < 64 for label in name.split(".")):
            return []  # RFC 7208 §4.3: a malformed domain has no records
        key = (name, qtype)
        if key not in self._answers:
            try:
                self._answers[key] = self._lookup(name, qtype)
            except DnsTemporaryError as exc:
                raise spf.TempError(f"DNS {exc}") from exc
        found = self._answers[key]
        if not found and not ignore_void:
            self.void_lookups += 1
            if self.void_lookups > spf.MAX_VOID_LOOKUPS:
                raise spf.PermError(f"Void lookup limit of {spf.MAX_VOID_LOOKUPS} exceeded")
        return list(found)  # dns_mx() sorts what it gets in place

    def _lookup(self, name: str, qtype: str) -> list[Any]:
        call, resolver = self._bridge.call, self._resolver
        if qtype == "TXT":
            return [(text.encode("utf-8"),) for text in call(resolver.txt, name)]
        if qtype in ("A", "AAAA"):
            return list(call(resolver.a if qtype == "A" else resolver.aaaa, name))
        if qtype == "MX":
            return list(call(resolver.mx, name))
        if qtype == "PTR":
            return list(call(resolver.ptr, name))
        return []  # type SPF (99) is obsolete (RFC 7208 §3.1)


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())


@dataclass(frozen=True, slots=True)
class _Run:
    """What every step of one check shares: the resolver, the deadline, the worker threads."""

    resolver: Resolver
    deadline: _Deadline
    executor: Executor | None

    async def in_thread(self, function: Callable[..., _T], *args: object) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, partial(function, *args))


class _Bridge:
    """Lets a worker thread await the resolver on the event loop, never past the deadline."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: _Deadline) -> None:
        self._loop = loop
        self._deadline = deadline

    def call(self, method: Callable[[str], Awaitable[_T]], name: str) -> _T:
        remaining = self._deadline.remaining()
        if remaining <= 0:
            raise DnsTimeoutError(f"{name}: no time left for the check")
        coroutine = _awaited(method, name)
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        except RuntimeError as exc:  # the loop has closed: the caller gave up on us
            coroutine.close()
            raise DnsTemporaryError(f"{name}: the event loop is gone") from exc
        try:
            return future.result(timeout=remaining)
        except TimeoutError as exc:
            future.cancel()
            raise DnsTimeoutError(f"{name}: no time left for the check") from exc
        except CancelledError as exc:  # the loop cancelled the lookup while shutting down
            raise DnsTemporaryError(f"{name}: lookup cancelled") from exc


async def _awaited(method: Callable[[str], Awaitable[_T]], name: str) -> _T:
    return await method(name)


# --- DKIM and the message -------------------------------------------------------------------


@dataclass
class _Signature:
    index: int
    domain: str
    selector: str
    error: str | None = None  # a permerror found before any lookup
    prepared: tuple[Any, Any, Any] | None = None  # dkimpy's (tags, signed headers, sig headers)

    @property
    def key_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"  # RFC 6376 §3.6.2.1


@dataclass
class _Message:
    verifier: Any  # dkim.DKIM, or None when dkimpy cannot read the header
    signatures: list[_Signature]
    from_domains: tuple[str, ...]


@dataclass
class _MessageChecks:
    dkim: tuple[DkimResult, ...] | None  # None: the message could not be read in time
    from_domains: tuple[str, ...] = ()
    policies: dict[str, Discovery] = field(default_factory=dict)


# Messages up to this size are read and parsed on the event loop: a hop to a worker thread
# costs more than the work. Larger ones (and every signature check) go to the threads.
_INLINE_BYTES = 128 * 1024


async def _check_message(raw: bytes | Path, run: _Run) -> _MessageChecks:
    try:
        async with asyncio.timeout(run.deadline.remaining()):
            data = raw if isinstance(raw, bytes) else await _read_file(raw, run)
            if len(data) <= _INLINE_BYTES:
                message = _read_message(data)
            else:
                message = await run.in_thread(_read_message, data)
    except TimeoutError:
        emit(_LOG, "auth.timed_out", check="message")
        return _MessageChecks(dkim=None)
    except Exception as exc:  # an unreadable spool file, a parser bug: no lost message
        emit(_LOG, "auth.failed", level=logging.WARNING, check="message", error=type(exc).__name__)
        return _MessageChecks(dkim=None)
    dkim_results, policies = await asyncio.gather(
        _check_dkim(message, run),
        _discover_policies(message.from_domains, run),
    )
    return _MessageChecks(dkim_results, message.from_domains, policies)


async def _read_file(path: Path, run: _Run) -> bytes:
    if path.stat().st_size <= _INLINE_BYTES:  # just written: in the page cache
        return path.read_bytes()
    return await run.in_thread(_read_for_checks, path)


def _read_for_checks(path: Path) -> bytes:
    """The message's header, and its body only when a DKIM signature needs it (the body hash):
    a large unsigned message is never held in memory."""
    with path.open("rb") as f:
        head = f.read(_INLINE_BYTES)
        end = _header_end(head)
        if end >= 0 and not _DKIM_HEADER.search(head, 0, end):
            return head[:end]
        return head + f.read()


def _header_end(data: bytes) -> int:
    """Where the header ends, its blank line included; -1 when it does not end in `data`."""
    ends = [i + len(blank) for blank in (b"\r\n\r\n", b"\n\n") if (i := data.find(blank)) >= 0]
    return min(ends, default=-1)


def _read_message(data: bytes) -> _Message:
    end = min((i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i >= 0), default=-1)
    header = data if end < 0 else data[: end + 2]
    addresses = parse_message(header).from_addresses
    domains = dict.fromkeys(normal_domain(a.rpartition("@")[2]) for a in addresses if "@" in a)
    from_domains = tuple(d for d in domains if d)
    try:
        verifier = dkim.DKIM(data)
    except Exception:  # dkimpy's header parser rejects lines it cannot read (and may crash)
        return _Message(None, _unreadable_signatures(header), from_domains)
    signatures = []
    values = [v for k, v in verifier.headers if k.lower() == b"dkim-signature"]
    for index, value in enumerate(values):
        signature = _Signature(index, _tag(value, b"d"), _tag(value, b"s"))
        try:
            signature.prepared = verifier.verify_headerprep(index)
        except dkim.DKIMException as exc:  # missing or invalid tags, expired (RFC 6376 §6.1.1)
            signature.error = str(exc)
        signatures.append(signature)
    return _Message(verifier, signatures, from_domains)


def _unreadable_signatures(header: bytes) -> list[_Signature]:
    found = _DKIM_HEADER.finditer(header)
    return [
        _Signature(i, _tag(header[m.end() : m.end() + 2000], b"d"), "", "unreadable header")
        for i, m in enumerate(found)
    ]


def _tag(value: bytes, name: bytes) -> str:
    unfolded = re.sub(rb"\r?\n[ \t]+", b" ", value)
    match = re.search(rb"(?:^|;)\s*" + name + rb"\s*=\s*([^;\s]*)", unfolded)
    return match.group(1).decode("utf-8", "replace") if match else ""


async def _check_dkim(message: _Message, run: _Run) -> tuple[DkimResult, ...]:
    if not message.signatures:
        return ()
    names = list(dict.fromkeys(s.key_name for s in message.signatures if s.error is None))
    try:
        async with asyncio.timeout(run.deadline.remaining()):
            answers = await asyncio.gather(*(_fetch_key(run.resolver, name) for name in names))
            keys = dict(zip(names, answers, strict=True))
            return await run.in_thread(_verify_signatures, message, keys)
    except TimeoutError:
        emit(_LOG, "auth.timed_out", check="dkim")
        word = "temperror"
    except Exception as exc:
        emit(_LOG, "auth.failed", level=logging.WARNING, check="dkim", error=type(exc).__name__)
        word = "temperror"
    return tuple(
        DkimResult("permerror" if s.error else word, s.domain, s.selector)
        for s in message.signatures
    )


async def _fetch_key(resolver: Resolver, name: str) -> list[str] | None:
    """The key records at `name`; None on a temporary DNS failure (RFC 6376 §6.1.2)."""
    try:
        return await resolver.txt(name)
    except DnsTemporaryError:
        return None


def _verify_signatures(
    message: _Message, keys: dict[str, list[str] | None]
) -> tuple[DkimResult, ...]:
    return tuple(
        DkimResult(_verify_one(message.verifier, s, keys), s.domain, s.selector)
        for s in message.signatures
    )


def _verify_one(verifier: Any, signature: _Signature, keys: dict[str, list[str] | None]) -> str:
    if signature.error is not None or signature.prepared is None:
        return "permerror"
    records = keys.get(signature.key_name)
    if records is None:
        return "temperror"
    if not records:
        return "permerror"  # no key for signature (RFC 6376 §6.1.2)
    record = records[0].encode("utf-8")  # several records: undefined, take the first (§3.6.2.2)
    tags, include_headers, sig_headers = signature.prepared
    try:
        dkim.evaluate_pk(signature.key_name.encode(), record)
        valid = verifier.verify_sig(
            tags,
            include_headers,
            sig_headers[signature.index],
            lambda _name, timeout=0: record,
        )
    except dkim.ValidationError as exc:
        return "fail" if str(exc).startswith("body hash mismatch") else "permerror"
    except (dkim.DKIMException, binascii.Error, ValueError):
        return "permerror"  # a key or signature that cannot be used (RFC 6376 §6.1.3)
    except Exception as exc:  # dkimpy's ASN.1 and crypto code on hostile bytes
        emit(_LOG, "auth.failed", level=logging.WARNING, check="dkim", error=type(exc).__name__)
        return "permerror"
    return "pass" if valid else "fail"


def _dkim_verdict(results: tuple[DkimResult, ...] | None, from_domains: tuple[str, ...]) -> Verdict:
    """The SES DKIM verdict from the signatures aligned with a From domain (module docstring)."""
    if results is None:
        return Verdict.PROCESSING_FAILED
    if from_domains:
        results = tuple(r for r in results if aligned_any(r.domain, from_domains))
    if not results:
        return Verdict.GRAY
    words = {r.result for r in results}
    if "pass" in words:
        return Verdict.PASS
    if "temperror" in words:
        return Verdict.PROCESSING_FAILED
    return Verdict.FAIL


# --- DMARC ----------------------------------------------------------------------------------


async def _discover_policies(from_domains: tuple[str, ...], run: _Run) -> dict[str, Discovery]:
    try:
        async with asyncio.timeout(run.deadline.remaining()):
            found = await asyncio.gather(*(discover(run.resolver, d) for d in from_domains))
            return dict(zip(from_domains, found, strict=True))
    except TimeoutError:
        emit(_LOG, "auth.timed_out", check="dmarc")
    except Exception as exc:
        emit(_LOG, "auth.failed", level=logging.WARNING, check="dmarc", error=type(exc).__name__)
    return {domain: Discovery(temporary_error=True) for domain in from_domains}


def _dmarc(checks: _MessageChecks, spf_result: _SpfResult) -> DmarcResult:
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
