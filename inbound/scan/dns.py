"""The one way inbound asks DNS: a `Resolver` with a timeout, for SPF, DKIM and DMARC alike.

This module owns the lookups (TXT, A, AAAA, MX, PTR) and the meaning of their failures: no such
name and no data are both an empty list; a timeout or a server failure is a
`DnsTemporaryError`. `DnsPythonResolver` asks the system's servers through dnspython;
`ZoneResolver` answers from small zone files (`fixtures/dns/*.zone`) so tests never touch the
network. It knows nothing about mail authentication.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.resolver
import dns.reversename

from inbound.core.errors import InboundError, InputError

DEFAULT_TIMEOUT = 5.0


class DnsTemporaryError(InboundError):
    """The answer is unknown for now: a server failure (RCODE 2 and others) or no reply.

    RFC 7208 §4.4, RFC 6376 §6.1.2 and RFC 7489 §6.6.3 all turn this into a temporary error,
    never into "no record".
    """


class DnsTimeoutError(DnsTemporaryError):
    """No answer within the resolver's timeout."""


class ZoneFileError(InputError):
    """A zone file line that `ZoneResolver` cannot read, as `FILE:LINE: message`."""


class Resolver(Protocol):
    """Every DNS question inbound asks. Names are absolute, with or without the final dot.

    Each method returns [] for NXDOMAIN and for NODATA (RFC 2308): the mail checks treat both
    as "no record" (RFC 7208 §4.3 and §5, RFC 6376 §6.1.2, RFC 7489 §6.6.3). A name that cannot
    exist (an empty or over-long label) is [] too. Temporary failures raise `DnsTemporaryError`.
    """

    async def txt(self, name: str) -> list[str]:
        """Each TXT record with its character-strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2)."""
        ...

    async def a(self, name: str) -> list[str]:
        """IPv4 addresses, as text."""
        ...

    async def aaaa(self, name: str) -> list[str]:
        """IPv6 addresses, as text."""
        ...

    async def mx(self, name: str) -> list[tuple[int, str]]:
        """(preference, exchange without the final dot) pairs."""
        ...

    async def ptr(self, name: str) -> list[str]:
        """Target names without the final dot; `name` is the reverse name (`...in-addr.arpa`)."""
        ...


@runtime_checkable
class AnswersAtHand(Protocol):
    """A resolver that can tell, without waiting, an answer it already holds (a zone, a cache
    within its TTL): the checks then run on the event loop, with no hop to a thread."""

    def answer_now(self, name: str, kind: str) -> list[Any] | None:
        """What the `Resolver` method for `kind` (TXT, A, AAAA, MX, PTR) would return for
        `name`, if known now without asking anyone; None otherwise (ask it the slow way)."""
        ...


def reverse_name(address: str) -> str:
    """The PTR name of an address: `10.2.0.192.in-addr.arpa` for 192.0.2.10 (RFC 1035 §3.5)."""
    return dns.reversename.from_address(address).to_text(omit_final_dot=True)


def _decode(data: bytes) -> str:
    # TXT data is bytes; the mail records are ASCII, and anything else only needs to stay
    # visibly wrong (U+FFFD) so that SPF reports its permerror (RFC 7208 §3.1).
    return data.decode("utf-8", "replace")


class DnsPythonResolver:
    """Real DNS through dnspython's asyncio resolver; each question ends within `timeout` s.

    Answers, NXDOMAIN included, are cached for their TTL (up to `cache_size` of them): a
    receiver asks the same SPF and DMARC questions for every message from a domain, and an
    uncached burst of them is what upstream resolvers throttle.
    """

    def __init__(
        self,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        nameservers: Sequence[str] | None = None,
        port: int = 53,
        cache_size: int = 10_000,
    ) -> None:
        self.timeout = timeout
        try:
            resolver = dns.asyncresolver.Resolver(configure=nameservers is None)
        except dns.exception.DNSException as exc:  # no /etc/resolv.conf, for instance
            raise InputError(f"cannot configure the DNS resolver: {exc}") from exc
        if nameservers is not None:
            resolver.port = port  # before the servers: dnspython binds the port to them
            resolver.nameservers = list(nameservers)
        resolver.lifetime = timeout
        resolver.cache = dns.resolver.LRUCache(cache_size) if cache_size else None
        self._resolver = resolver

    async def txt(self, name: str) -> list[str]:
        return _txts(await self._resolve(name, dns.rdatatype.TXT))

    async def a(self, name: str) -> list[str]:
        return _addresses(await self._resolve(name, dns.rdatatype.A))

    async def aaaa(self, name: str) -> list[str]:
        return _addresses(await self._resolve(name, dns.rdatatype.AAAA))

    async def mx(self, name: str) -> list[tuple[int, str]]:
        return _exchanges(await self._resolve(name, dns.rdatatype.MX))

    async def ptr(self, name: str) -> list[str]:
        return _targets(await self._resolve(name, dns.rdatatype.PTR))

    def answer_now(self, name: str, kind: str) -> list[Any] | None:
        """An answer (NXDOMAIN and NODATA too) from the cache, within its TTL; else None."""
        cache = self._resolver.cache
        shape = _SHAPES.get(kind)
        if cache is None or shape is None:
            return None
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException:
            return None  # the slow way has the answer to that
        # dnspython keeps an NXDOMAIN under the type ANY, for every type of the name.
        missing = cache.get((qname, dns.rdatatype.ANY, dns.rdataclass.IN))
        if missing is not None and missing.response.rcode() == dns.rcode.NXDOMAIN:
            return []
        answer = cache.get((qname, dns.rdatatype.from_text(kind), dns.rdataclass.IN))
        if answer is None:
            return None
        return shape([] if answer.rrset is None else list(answer.rrset))

    async def _resolve(self, name: str, rdtype: dns.rdatatype.RdataType) -> list[dns.rdata.Rdata]:
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException:
            return []  # an empty or over-long label, a bad escape: no such name can exist
        try:
            answer = await self._resolver.resolve(
                qname, rdtype, search=False, lifetime=self.timeout
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.Timeout as exc:
            raise DnsTimeoutError(f"{name} {rdtype.name}: no answer in {self.timeout:g} s") from exc
        except dns.resolver.NoNameservers as exc:  # SERVFAIL or REFUSED from every server
            raise DnsTemporaryError(f"{name} {rdtype.name}: server failure") from exc
        except dns.exception.DNSException as exc:
            raise DnsTemporaryError(f"{name} {rdtype.name}: {type(exc).__name__}") from exc
        return list(answer)


def _txts(answer: list[dns.rdata.Rdata]) -> list[str]:
    return [
        _decode(b"".join(rdata.strings))
        for rdata in answer
        if isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)
    ]


def _addresses(answer: list[dns.rdata.Rdata]) -> list[str]:
    return [
        rdata.address
        for rdata in answer
        if isinstance(rdata, (dns.rdtypes.IN.A.A, dns.rdtypes.IN.AAAA.AAAA))
    ]


def _exchanges(answer: list[dns.rdata.Rdata]) -> list[tuple[int, str]]:
    return [
        (rdata.preference, rdata.exchange.to_text(omit_final_dot=True))
        for rdata in answer
        if isinstance(rdata, dns.rdtypes.ANY.MX.MX)
    ]


def _targets(answer: list[dns.rdata.Rdata]) -> list[str]:
    return [
        rdata.target.to_text(omit_final_dot=True)
        for rdata in answer
        if isinstance(rdata, dns.rdtypes.ANY.PTR.PTR)
    ]


_SHAPES: dict[str, Callable[[list[dns.rdata.Rdata]], list[Any]]] = {
    "TXT": _txts,
    "A": _addresses,
    "AAAA": _addresses,
    "MX": _exchanges,
    "PTR": _targets,
}


# --- zone files for tests -------------------------------------------------------------------
#
# One record a line: NAME TYPE [VALUE]. Names are absolute (the final dot is optional) and
# case-insensitive; "#" or ";" starts a comment line. Types:
#   TXT       one or more "quoted strings" (joined, with \" and \\ escapes), or bare text
#   A, AAAA   an address;  MX  preference and exchange;  PTR  a target name
#   TIMEOUT   every question about NAME waits for the resolver's timeout, then times out
#   SERVFAIL  every question about NAME fails at once (a temporary error)
# A line starting with white space continues the TXT record above it with more strings.

_RECORD_TYPES = ("TXT", "A", "AAAA", "MX", "PTR")
_FAILURE_TYPES = ("TIMEOUT", "SERVFAIL")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass
class _Zone:
    records: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)
    failures: dict[str, str] = field(default_factory=dict)


class ZoneResolver:
    """Answers from zone text; `queries` records the last `QUERY_HISTORY` questions as
    (name, type), in order (bounded: `inbound serve --dns-zone` may run for months)."""

    QUERY_HISTORY = 1000

    def __init__(self, zone_text: str = "", *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        self.queries: deque[tuple[str, str]] = deque(maxlen=self.QUERY_HISTORY)
        self._zone = _Zone()
        if zone_text:
            self.add_text(zone_text, source="<text>")

    @classmethod
    def from_files(
        cls, paths: Iterable[Path], *, text: str = "", timeout: float = DEFAULT_TIMEOUT
    ) -> ZoneResolver:
        """The records of every file in `paths`, plus those of `text`."""
        resolver = cls(timeout=timeout)
        for path in paths:
            resolver.add_text(path.read_text(encoding="utf-8"), source=str(path))
        if text:
            resolver.add_text(text, source="<text>")
        return resolver

    def add_text(self, text: str, *, source: str) -> None:
        """Add the records of `text`; a bad line raises `ZoneFileError` naming `source:line`."""
        last: tuple[str, str] | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped[0] in "#;":
                continue
            where = f"{source}:{number}"
            if line[0] in " \t":
                if last is None or last[1] != "TXT":
                    raise ZoneFileError(f"{where}: a continuation line belongs under a TXT line")
                values = self._zone.records[last]
                values[-1] += _txt_value(stripped, where)
                continue
            last = self._add_line(stripped, where)

    def _add_line(self, line: str, where: str) -> tuple[str, str] | None:
        parts = line.split(None, 2)
        if len(parts) < 2:
            raise ZoneFileError(f"{where}: expected NAME TYPE [VALUE]")
        name, kind = _normal(parts[0]), parts[1].upper()
        value = parts[2] if len(parts) == 3 else ""
        if kind in _FAILURE_TYPES:
            if value:
                raise ZoneFileError(f"{where}: {kind} takes no value")
            self._zone.failures[name] = kind
            return None
        if kind not in _RECORD_TYPES:
            known = ", ".join(_RECORD_TYPES + _FAILURE_TYPES)
            raise ZoneFileError(f"{where}: unknown type {parts[1]!r} (known: {known})")
        if not value:
            raise ZoneFileError(f"{where}: {kind} needs a value")
        self._zone.names.add(name)
        self._zone.records.setdefault((name, kind), []).append(_value(kind, value, where))
        return (name, kind)

    async def txt(self, name: str) -> list[str]:
        return await self._answer(name, "TXT")

    async def a(self, name: str) -> list[str]:
        return await self._answer(name, "A")

    async def aaaa(self, name: str) -> list[str]:
        return await self._answer(name, "AAAA")

    async def mx(self, name: str) -> list[tuple[int, str]]:
        pairs = [value.split() for value in await self._answer(name, "MX")]
        return [(int(preference), exchange) for preference, exchange in pairs]

    async def ptr(self, name: str) -> list[str]:
        return await self._answer(name, "PTR")

    def answer_now(self, name: str, kind: str) -> list[Any] | None:
        """The zone's answer, unless `name` is made to fail (TIMEOUT, SERVFAIL) or `kind` is
        not one of the zone's types."""
        qname = _normal(name)
        if qname in self._zone.failures or kind not in _RECORD_TYPES:
            return None
        self.queries.append((qname, kind))
        values = list(self._zone.records.get((qname, kind), []))
        if kind == "MX":
            return [(int(p), exchange) for p, exchange in (value.split() for value in values)]
        return values

    async def _answer(self, name: str, kind: str) -> list[str]:
        qname = _normal(name)
        self.queries.append((qname, kind))
        failure = self._zone.failures.get(qname)
        if failure == "TIMEOUT":
            await asyncio.sleep(self.timeout)
            raise DnsTimeoutError(f"{qname} {kind}: no answer in {self.timeout:g} s")
        if failure == "SERVFAIL":
            raise DnsTemporaryError(f"{qname} {kind}: server failure")
        return list(self._zone.records.get((qname, kind), []))


def _normal(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _value(kind: str, value: str, where: str) -> str:
    if kind == "TXT":
        return _txt_value(value, where)
    try:
        if kind == "A":
            return str(IPv4Address(value))
        if kind == "AAAA":
            return str(IPv6Address(value))
    except ValueError as exc:
        raise ZoneFileError(f"{where}: {exc}") from exc
    if kind == "MX":
        parts = value.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise ZoneFileError(f"{where}: MX needs PREFERENCE EXCHANGE")
        return f"{int(parts[0])} {_normal(parts[1])}"
    return _normal(value)  # PTR


def _txt_value(value: str, where: str) -> str:
    if not value.startswith('"'):
        return value
    strings = []
    rest = value
    while rest:
        match = _QUOTED.match(rest)
        if match is None:
            raise ZoneFileError(f'{where}: expected only "quoted strings" after TXT')
        strings.append(re.sub(r"\\(.)", r"\1", match.group(1)))
        rest = rest[match.end() :].lstrip()
    return "".join(strings)
