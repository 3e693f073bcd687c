"""The checks that read the message: DKIM (dkimpy, every signature) and the DMARC policies of
its From domains. Small messages are read on the event loop; a large one is read in a thread,
and its body only when a DKIM signature needs the body hash.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import dkim

from inbound.core.ports import MessageSource
from inbound.core.verdicts import Verdict
from inbound.message.headers import DkimResult
from inbound.message.parse import from_addresses
from inbound.message.source import header_end
from inbound.observe.log import emit
from inbound.scan.checkrun import CheckRun
from inbound.scan.dmarc import Discovery, aligned_any, discover, normal_domain
from inbound.scan.dns import DnsTemporaryError, Resolver

log = logging.getLogger("inbound.scan.auth")
_DKIM_HEADER = re.compile(rb"^dkim-signature[ \t]*:", re.IGNORECASE | re.MULTILINE)


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
class MessageChecks:
    dkim: tuple[DkimResult, ...] | None  # None: the message could not be read in time
    from_domains: tuple[str, ...] = ()
    policies: dict[str, Discovery] = field(default_factory=dict)


# Messages up to this size are read and parsed on the event loop: a hop to a worker thread
# costs more than the work. Larger ones (and every signature check) go to the threads.
_INLINE_BYTES = 128 * 1024


async def check_message(raw: bytes | MessageSource, run: CheckRun) -> MessageChecks:
    try:
        async with asyncio.timeout(run.deadline.remaining()):
            data = raw if isinstance(raw, bytes) else await _read_source(raw, run)
            if len(data) <= _INLINE_BYTES:
                message = _read_message(data)
            else:
                message = await run.in_thread(_read_message, data)
    except TimeoutError:
        emit(log, "auth.timed_out", check="message")
        return MessageChecks(dkim=None)
    except Exception as exc:  # an unreadable message, a parser bug: no lost message
        emit(log, "auth.failed", level=logging.WARNING, check="message", error=type(exc).__name__)
        return MessageChecks(dkim=None)
    dkim_results, policies = await asyncio.gather(
        _check_dkim(message, run),
        discover_policies(message.from_domains, run),
    )
    return MessageChecks(dkim_results, message.from_domains, policies)


async def _read_source(source: MessageSource, run: CheckRun) -> bytes:
    if source.size <= _INLINE_BYTES:  # just written: in the page cache
        return source.read_all()
    return await run.in_thread(_read_for_checks, source)


def _read_for_checks(source: MessageSource) -> bytes:
    """The message's header, and its body only when a DKIM signature needs it (the body hash):
    a large unsigned message is never held in memory."""
    head = source.head(_INLINE_BYTES)
    if header_end(head) is not None and not _DKIM_HEADER.search(head):
        return head
    return source.read_all()


def _read_message(data: bytes) -> _Message:
    end = min((i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i >= 0), default=-1)
    header = data if end < 0 else data[: end + 2]
    addresses = from_addresses(header)
    domains = dict.fromkeys(normal_domain(a.rpartition("@")[2]) for a in addresses if "@" in a)
    from_domains = tuple(d for d in domains if d)
    if not _DKIM_HEADER.search(header):
        # No field dkimpy could take for a signature (its names are a subset of what the
        # pattern matches): nothing to verify, and no need to have dkimpy split every line.
        return _Message(None, [], from_domains)
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


async def _check_dkim(message: _Message, run: CheckRun) -> tuple[DkimResult, ...]:
    if not message.signatures:
        return ()
    names = list(dict.fromkeys(s.key_name for s in message.signatures if s.error is None))
    try:
        async with asyncio.timeout(run.deadline.remaining()):
            answers = await asyncio.gather(*(_fetch_key(run.resolver, name) for name in names))
            keys = dict(zip(names, answers, strict=True))
            return await run.in_thread(_verify_signatures, message, keys)
    except TimeoutError:
        emit(log, "auth.timed_out", check="dkim")
        word = "temperror"
    except Exception as exc:
        emit(log, "auth.failed", level=logging.WARNING, check="dkim", error=type(exc).__name__)
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
        emit(log, "auth.failed", level=logging.WARNING, check="dkim", error=type(exc).__name__)
        return "permerror"
    return "pass" if valid else "fail"


def dkim_verdict(results: tuple[DkimResult, ...] | None, from_domains: tuple[str, ...]) -> Verdict:
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


async def discover_policies(from_domains: tuple[str, ...], run: CheckRun) -> dict[str, Discovery]:
    try:
        async with asyncio.timeout(run.deadline.remaining()):
            found = await asyncio.gather(*(discover(run.resolver, d) for d in from_domains))
            return dict(zip(from_domains, found, strict=True))
    except TimeoutError:
        emit(log, "auth.timed_out", check="dmarc")
    except Exception as exc:
        emit(log, "auth.failed", level=logging.WARNING, check="dmarc", error=type(exc).__name__)
    return {domain: Discovery(temporary_error=True) for domain in from_domains}
