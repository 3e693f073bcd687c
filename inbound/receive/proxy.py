"""The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2): bytes in, the
client's address out. Pure: no I/O, no clock; the session (smtp.py) feeds it what it has read.

`parse` answers None while the bytes are a valid beginning of a header (TCP may split it, and
the spec, section 2, recommends tolerating that), a `ProxyHeader` once one is whole, and
raises a `ProxyHeaderError` naming why as soon as the bytes cannot become one. Every input is
bounded: a v1 line ends within 107 octets (section 2.1), a v2 header within
`V2_MAX_LENGTH` octets of its length field.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from inbound.receive.limits import ReceiverLimits

V1_PREFIX = b"PROXY "
# Section 2.2: the signature, then version 2 in the high nibble of the 13th byte.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# Section 2.1: "PROXY UNKNOWN ffff:...:ffff ffff:...:ffff 65535 65535\r\n", the longest line.
V1_MAX_LENGTH = 107
# Section 2.2: 16 octets, then the length field's worth. Addresses take at most 216 (AF_UNIX);
# the rest is TLVs, which inbound ignores (section 2.2.7: a receiver may skip them): 4 KiB is
# room for any a balancer sends (AWS's VPC endpoint ID, HAProxy's SSL fields) and no more.
V2_MAX_LENGTH = 4096

_PORT = re.compile(r"0|[1-9][0-9]{0,4}")
_V1_FIELDS = 6  # PROXY, protocol, source, destination, source port, destination port

# The spec, section 1: "a short timeout ... at least 3 seconds to cover a TCP retransmit";
# Postfix's smtpd_upstream_proxy_timeout is 5 s. A balancer sends its header with the
# connection's first segment, so 10 s (or the command timeout, if shorter) is ample.
HEADER_SECONDS = 10.0

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


class ProxyHeaderError(Exception):
    """The bytes are not a header inbound accepts; `reason` says why, for the log."""

    reason = "malformed"


class NoHeaderError(ProxyHeaderError):
    """The connection does not start with a v1 or v2 signature."""

    reason = "missing"


class MalformedHeaderError(ProxyHeaderError):
    """A signature, then something the spec does not allow."""

    reason = "malformed"


class OversizedHeaderError(ProxyHeaderError):
    """A v1 line without CRLF in 107 octets, or a v2 length beyond `V2_MAX_LENGTH`."""

    reason = "oversized"


class UnsupportedHeaderError(ProxyHeaderError):
    """A v2 version or command the spec does not assign (section 2.2: must be dropped)."""

    reason = "unsupported"


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A whole header. `source` is the proxied client's address, or None where the connection's
    own address stands (v2 LOCAL, a health check; v1 UNKNOWN; a v2 family other than TCP over
    IPv4/IPv6, which the spec says to treat as UNSPEC: "use the real connection endpoints")."""

    version: int
    source: Address | None
    length: int  # octets of the header, the first byte after it is the client's


class BadNetworkError(ValueError):
    """A `--proxy-protocol` entry that is no address or network."""

    def __init__(self, entry: str) -> None:
        super().__init__(entry)
        self.entry = entry


@dataclass(frozen=True, slots=True)
class ProxyTrust:
    """The addresses whose connections start with a PROXY header (`--proxy-protocol`)."""

    networks: tuple[Network, ...]

    @classmethod
    def parse(cls, text: str) -> ProxyTrust:
        """`CIDR,CIDR,...` (a bare address is a /32 or /128); host bits set are refused, as
        they are a typo more often than a network (10.0.0.1/8)."""
        networks: list[Network] = []
        for entry in text.split(","):
            try:
                networks.append(ip_network(entry.strip()))
            except ValueError:
                raise BadNetworkError(entry.strip()) from None
        return cls(tuple(networks))

    def trusts(self, ip: str) -> bool:
        try:
            address = ip_address(ip)
        except ValueError:
            return False
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack listener's view of an IPv4 peer
        return any(address in network for network in self.networks)

    @staticmethod
    def header_timeout(limits: ReceiverLimits) -> float:
        return min(limits.command_timeout, HEADER_SECONDS)


def looks_like_header(data: bytes) -> bool | None:
    """Whether the first bytes of a connection begin a PROXY header (True), cannot (False), or
    are too few to tell (None): for refusing a header from an untrusted address."""
    for signature in (V1_PREFIX, V2_SIGNATURE):
        if data.startswith(signature):
            return True
        if signature.startswith(data):
            return None
    return False


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of `data`; None if `data` is a valid but incomplete beginning."""
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    if data.startswith(V1_PREFIX):
        return _parse_v1(data)
    if V2_SIGNATURE.startswith(data) or V1_PREFIX.startswith(data):
        return None
    raise NoHeaderError


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH:
            raise OversizedHeaderError
        if b"\r" in data[:-1]:
            raise MalformedHeaderError  # a CR that is not the end of the line
        return None
    # Section 2.1: a lone LF does not end the line.
    if end == 0 or data[end - 1] != 0x0D:
        raise MalformedHeaderError
    try:
        line = data[: end - 1].decode("ascii")
    except UnicodeDecodeError:
        raise MalformedHeaderError from None
    fields = line.split(" ")  # exactly one space between fields: "" where there are two
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        # Section 2.1: whatever follows UNKNOWN is ignored; the real endpoints stand.
        return ProxyHeader(1, None, end + 1)
    if len(fields) != _V1_FIELDS:
        raise MalformedHeaderError
    _, protocol, source, destination, source_port, destination_port = fields
    family: type[Address]
    if protocol == "TCP4":
        family = IPv4Address
    elif protocol == "TCP6":
        family = IPv6Address
    else:
        raise MalformedHeaderError
    client = _v1_address(family, source)
    _v1_address(family, destination)
    for port in (source_port, destination_port):
        if not _PORT.fullmatch(port) or int(port) > 0xFFFF:
            raise MalformedHeaderError
    return ProxyHeader(1, _unmapped(client), end + 1)


def _v1_address(family: type[Address], text: str) -> Address:
    # ipaddress refuses leading zeroes in IPv4 (the spec's "no octal confusion"); a zone
    # ("%eth0") is no part of the spec's format.
    if "%" in text:
        raise MalformedHeaderError
    try:
        return family(text)
    except ValueError:
        raise MalformedHeaderError from None


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < 16:
        return None
    version_command, family_protocol, length = struct.unpack_from("!BBH", data, 12)
    if version_command >> 4 != 2:
        raise UnsupportedHeaderError
    command = version_command & 0x0F
    if command not in (0, 1):
        raise UnsupportedHeaderError  # section 2.2: "must drop connections presenting" others
    family, protocol = family_protocol >> 4, family_protocol & 0x0F
    if family > 3 or protocol > 2:
        raise UnsupportedHeaderError  # "must be rejected as invalid by receivers"
    if length > V2_MAX_LENGTH:
        raise OversizedHeaderError
    total = 16 + length
    if len(data) < total:
        return None
    if command == 0 or protocol != 1:
        # LOCAL (a health check) or UNSPEC; DGRAM is no SMTP client's: the real endpoints.
        return ProxyHeader(2, None, total)
    block = data[16:total]
    source: Address
    if family == 1:
        if length < 12:
            raise MalformedHeaderError
        source = IPv4Address(block[:4])
    elif family == 2:
        if length < 36:
            raise MalformedHeaderError
        source = IPv6Address(block[:16])
    else:
        # AF_UNSPEC, or AF_UNIX (a local process has no IP to judge): the spec's fallback.
        return ProxyHeader(2, None, total)
    return ProxyHeader(2, _unmapped(source), total)


def _unmapped(address: Address) -> Address:
    """An IPv4 client seen by a dual-stack balancer arrives as ::ffff:a.b.c.d (HAProxy on
    `:::25 v4v6`): it is the IPv4 address that filters, limits and SPF must judge."""
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
