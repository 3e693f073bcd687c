"""The PROXY header parser (inbound/receive/proxy.py) against HAProxy's proxy-protocol.txt:
the headers it accepts, those it refuses and why, fragments, and arbitrary bytes."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inbound.receive.limits import ReceiverLimits
from inbound.receive.proxy import (
    V2_MAX_LENGTH,
    V2_SIGNATURE,
    BadNetworkError,
    MalformedHeaderError,
    NoHeaderError,
    OversizedHeaderError,
    ProxyHeader,
    ProxyHeaderError,
    ProxyTrust,
    UnsupportedHeaderError,
    looks_like_header,
    parse,
)


def v2(command: int, family: int, block: bytes, version: int = 2) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", version << 4 | command, family, len(block)) + block


def v2_tcp4(source: str, tlvs: bytes = b"") -> bytes:
    addresses = IPv4Address(source).packed + IPv4Address("10.0.0.1").packed
    return v2(1, 0x11, addresses + struct.pack("!HH", 40000, 25) + tlvs)


def v2_tcp6(source: str) -> bytes:
    addresses = IPv6Address(source).packed + IPv6Address("2001:db8::1").packed
    return v2(1, 0x21, addresses + struct.pack("!HH", 40000, 25))


V1_TCP4 = b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 25\r\n"


@pytest.mark.parametrize(
    ("data", "source", "version"),
    [
        (V1_TCP4, "198.51.100.7", 1),
        (b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 0\r\n", "2001:db8::7", 1),
        (b"PROXY UNKNOWN\r\n", None, 1),
        (b"PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\n", None, 1),
        (v2_tcp4("198.51.100.7"), "198.51.100.7", 2),
        (v2_tcp4("198.51.100.7", tlvs=b"\x05\x00\x02ab"), "198.51.100.7", 2),
        (v2_tcp6("2001:db8::7"), "2001:db8::7", 2),
        # A dual-stack balancer's IPv4 client: judged as the IPv4 address it is.
        (b"PROXY TCP6 ::ffff:198.51.100.7 ::1 1 2\r\n", "198.51.100.7", 1),
        (v2_tcp6("::ffff:198.51.100.7"), "198.51.100.7", 2),
        # LOCAL (a health check) and the families without an IP: the connection's own address.
        (v2(0, 0x00, b""), None, 2),
        (v2(0, 0x11, bytes(12)), None, 2),
        (v2(1, 0x00, b""), None, 2),
        (v2(1, 0x31, bytes(216)), None, 2),
        (v2(1, 0x12, bytes(12)), None, 2),
    ],
)
def test_a_whole_header_gives_the_client_address(
    data: bytes, source: str | None, version: int
) -> None:
    header = parse(data + b"EHLO client.example\r\n")
    assert header == ProxyHeader(version, None if source is None else ip_address(source), len(data))


@pytest.mark.parametrize("data", [V1_TCP4, v2_tcp4("192.0.2.1"), v2_tcp6("2001:db8::2")])
def test_every_fragment_of_a_header_waits_for_the_rest(data: bytes) -> None:
    for end in range(len(data)):
        assert parse(data[:end]) is None, data[:end]
    assert parse(data) is not None


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"EHLO client.example\r\n", NoHeaderError),
        (b"\r\n\r\n\x00\r\nQUIX\n", NoHeaderError),
        (b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 25\n", MalformedHeaderError),  # a lone LF
        (b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 25\r\r\n", MalformedHeaderError),
        (b"PROXY TCP4 198.51.100.7\r10.0.0.1", MalformedHeaderError),
        (b"PROXY TCP4  198.51.100.7 10.0.0.1 40000 25\r\n", MalformedHeaderError),
        (b"PROXY TCP5 198.51.100.7 10.0.0.1 40000 25\r\n", MalformedHeaderError),
        (b"PROXY TCP4 2001:db8::7 10.0.0.1 40000 25\r\n", MalformedHeaderError),
        (b"PROXY TCP6 198.51.100.7 2001:db8::1 40000 25\r\n", MalformedHeaderError),
        (b"PROXY TCP4 198.51.100.07 10.0.0.1 40000 25\r\n", MalformedHeaderError),
        (b"PROXY TCP4 198.51.100.7 10.0.0.1 040000 25\r\n", MalformedHeaderError),
        (b"PROXY TCP4 198.51.100.7 10.0.0.1 65536 25\r\n", MalformedHeaderError),
        (b"PROXY TCP4 198.51.100.7 10.0.0.1 40000\r\n", MalformedHeaderError),
        (b"PROXY TCP6 fe80::1%eth0 2001:db8::1 40000 25\r\n", MalformedHeaderError),
        (b"PROXY TCP4 198.51.100.\xff 10.0.0.1 40000 25\r\n", MalformedHeaderError),
        (b"PROXY " + b"A" * 101, OversizedHeaderError),
        (b"PROXY UNKNOWN " + b"1" * 200 + b"\r\n", OversizedHeaderError),
        (v2(1, 0x11, b"", version=1), UnsupportedHeaderError),
        (v2(2, 0x11, bytes(12)), UnsupportedHeaderError),
        (v2(1, 0x41, bytes(12)), UnsupportedHeaderError),
        (v2(1, 0x13, bytes(12)), UnsupportedHeaderError),
        (v2(1, 0x11, bytes(11)), MalformedHeaderError),
        (v2(1, 0x21, bytes(35)), MalformedHeaderError),
        (V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, V2_MAX_LENGTH + 1), OversizedHeaderError),
    ],
)
def test_what_the_spec_does_not_allow_is_refused_with_its_reason(
    data: bytes, error: type[ProxyHeaderError]
) -> None:
    with pytest.raises(error):
        parse(data)


def test_the_longest_v1_line_is_accepted() -> None:
    address = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    line = f"PROXY TCP6 {address} {address} 65535 65535\r\n".encode()
    assert len(line) == 104
    assert parse(line) == ProxyHeader(1, ip_address(address), 104)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_the_parsers_errors(data: bytes) -> None:
    try:
        header = parse(data)
    except ProxyHeaderError:
        return
    assert header is None or 0 < header.length <= len(data)


@given(st.sampled_from([V1_TCP4[:6], V2_SIGNATURE]), st.binary(max_size=300))
def test_bytes_after_a_signature_raise_only_the_parsers_errors(prefix: bytes, data: bytes) -> None:
    try:
        header = parse(prefix + data)
    except ProxyHeaderError:
        return
    assert header is None or 0 < header.length <= len(prefix) + len(data)


@pytest.mark.parametrize(
    ("data", "verdict"),
    [
        (b"PROXY TCP4 ", True),
        (V2_SIGNATURE, True),
        (b"PROX", None),
        (b"\r\n\r\n\x00", None),
        (b"EHLO x\r\n", False),
        (b"PROXYX", False),
    ],
)
def test_a_header_is_recognised_from_its_first_bytes(data: bytes, verdict: bool | None) -> None:
    assert looks_like_header(data) is verdict


def test_trusted_addresses_are_networks_and_addresses() -> None:
    trust = ProxyTrust.parse("10.0.0.0/8, 192.0.2.5,2001:db8::/32")
    assert trust.trusts("10.1.2.3")
    assert trust.trusts("192.0.2.5")
    assert trust.trusts("::ffff:10.9.9.9")  # a dual-stack listener's IPv4 peer
    assert trust.trusts("2001:db8::9")
    assert not trust.trusts("192.0.2.6")
    assert not trust.trusts("not an address")
    assert trust.header_timeout(ReceiverLimits(command_timeout=2.0)) == 2.0
    assert trust.header_timeout(ReceiverLimits()) == 10.0


@pytest.mark.parametrize("text", ["10.0.0.1/8", "10.0.0.300", "", "10.0.0.0/8,,"])
def test_a_bad_network_is_named(text: str) -> None:
    with pytest.raises(BadNetworkError):
        ProxyTrust.parse(text)
