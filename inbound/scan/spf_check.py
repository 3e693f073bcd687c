"""SPF (RFC 7208) for one message with pyspf, every DNS question asked through our resolver.

pyspf is blocking. When the resolver holds every answer the check needs (a zone, answers
cached within their TTL: the same sender domains again and again), it runs on the event loop:
pure computation, cheaper than a hop to a thread. Otherwise it runs on a worker thread, and
`_Bridge` lets that thread await the resolver on the event loop, never past the deadline.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import CancelledError
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any, TypeVar

import spf

from inbound.observe.log import emit
from inbound.scan.checkrun import CheckRun, Deadline
from inbound.scan.dmarc import normal_domain
from inbound.scan.dns import AnswersAtHand, DnsTemporaryError, DnsTimeoutError, Resolver

log = logging.getLogger("inbound.scan.auth")
_T = TypeVar("_T")
# (name, type, answer) of one answer at hand a check was made from.
_Consulted = tuple[str, str, list[Any]]
# Checks remembered per resolver (`_spf_at_hand`); forgotten all at once beyond this many.
MEMO_SIZE = 4096
_MEMO: weakref.WeakKeyDictionary[
    AnswersAtHand, dict[tuple[str, str, str], tuple[SpfResult, tuple[_Consulted, ...]]]
] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, slots=True)
class SpfResult:
    result: str  # RFC 7208 §2.6 word
    explanation: str
    domain: str  # the checked identity's domain: MAIL FROM's, or HELO for <> (RFC 7208 §2.4)


async def check_spf(client_ip: str, helo: str, mail_from: str, run: CheckRun) -> SpfResult:
    domain = normal_domain(mail_from.rpartition("@")[2] if mail_from else helo)
    try:
        ip = str(ip_address(client_ip))
    except ValueError:
        return SpfResult("temperror", f"no client IP address to check {domain} with", domain)
    if not domain:
        return SpfResult("none", "no MAIL FROM or HELO domain to check", domain)
    if run.deadline.remaining() > 0:
        at_hand = _spf_at_hand(run.resolver, ip, mail_from, helo)
        if at_hand is not None and run.deadline.remaining() > 0:  # else: timed out, as below
            return at_hand
    bridge = _Bridge(asyncio.get_running_loop(), run.deadline)
    try:
        async with asyncio.timeout(run.deadline.remaining()):
            return await run.in_thread(_run_spf, bridge, run.resolver, ip, mail_from, helo)
    except TimeoutError:
        emit(log, "auth.timed_out", check="spf")
        return SpfResult("temperror", "SPF check timed out", domain)
    except Exception as exc:  # a library bug must not lose the message (SPEC §2)
        emit(log, "auth.failed", level=logging.WARNING, check="spf", error=type(exc).__name__)
        return SpfResult("temperror", "SPF check failed", domain)


def _run_spf(bridge: _Bridge, resolver: Resolver, ip: str, mail_from: str, helo: str) -> SpfResult:
    query = _SpfQuery(bridge, resolver, ip=ip, mail_from=mail_from, helo=helo)
    return _result(query)


def _result(query: _SpfQuery) -> SpfResult:
    result, _code, _text = query.check()
    return SpfResult(str(result), str(query.get_header_comment(result)), normal_domain(query.o))


def _spf_at_hand(resolver: Resolver, ip: str, mail_from: str, helo: str) -> SpfResult | None:
    """The check from answers the resolver has at hand; None as soon as one is missing (or
    anything fails): the thread then runs it the usual way, with the same outcome.

    The check is a function of its inputs and of the answers it was given, so a result is
    remembered with those answers, and stands while the resolver still has the same ones (a
    zone's for ever, a cache's within their TTL): a sender's next message costs a look at
    them, not a check."""
    if not isinstance(resolver, AnswersAtHand):
        return None
    key = (ip, mail_from, helo)
    memo = _MEMO.get(resolver)
    if memo is None:
        memo = _MEMO[resolver] = {}
    known = memo.get(key)
    if known is not None:
        result, consulted = known
        if all(resolver.answer_now(name, kind) == found for name, kind, found in consulted):
            return result
    query = _SpfQuery(None, resolver, ip=ip, mail_from=mail_from, helo=helo)
    try:
        result = _result(query)
    except Exception:
        return None
    # pyspf swallows some exceptions whole (its exp= and strict ptr code): the flag, not the
    # exception, says whether an answer was missing.
    if query.missed:
        return None
    if len(memo) >= MEMO_SIZE:
        memo.clear()
    memo[key] = (result, tuple(query.consulted))
    return result


class _SpfQuery(spf.query):  # type: ignore[misc]  # pyspf has no type hints
    """pyspf's check with its one door to DNS, `query.dns`, opened onto our resolver.

    pyspf otherwise calls a module-level lookup (`spf.DNSLookup`); replacing that would be
    process-wide, so this override keeps pyspf's contract instead: lists of TXT string tuples,
    address strings, (preference, name) pairs; void lookups counted (RFC 7208 §4.6.4).
    """

    def __init__(
        self,
        bridge: _Bridge | None,
        resolver: Resolver,
        *,
        ip: str,
        mail_from: str,
        helo: str,
    ) -> None:
        super().__init__(i=ip, s=mail_from, h=helo)
        self._bridge = bridge  # None: only answers at hand (`_spf_at_hand`)
        self._resolver = resolver
        self._answers: dict[tuple[str, str], list[Any]] = {}
        self.missed = False  # an answer was not at hand
        self.consulted: list[_Consulted] = []  # the answers at hand it was given

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
        if self._bridge is None:
            return self._at_hand(name, qtype)
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

    def _at_hand(self, name: str, qtype: str) -> list[Any]:
        if qtype not in ("TXT", "A", "AAAA", "MX", "PTR"):
            return []  # as `_lookup`
        found = (
            self._resolver.answer_now(name, qtype)
            if isinstance(self._resolver, AnswersAtHand)
            else None
        )
        if found is None:
            self.missed = True
            raise _NotAtHand(f"{name} {qtype}")
        self.consulted.append((name, qtype, list(found)))
        if qtype == "TXT":
            return [(text.encode("utf-8"),) for text in found]
        return found


class _NotAtHand(Exception):  # noqa: N818 - a signal, not an error
    """An answer `_spf_at_hand` does not have: the check goes to a thread."""


class _Bridge:
    """Lets a worker thread await the resolver on the event loop, never past the deadline."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: Deadline) -> None:
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
