"""Daemon addresses: every accepted form, and a clear `InputError` for junk."""

from __future__ import annotations

import pytest

from inbound.core.errors import InputError
from inbound.scan.address import TcpAddress, UnixAddress, parse_address

GOOD = [
    pytest.param("127.0.0.1:3310", TcpAddress("127.0.0.1", 3310), id="ipv4"),
    pytest.param("localhost:783", TcpAddress("localhost", 783), id="hostname"),
    pytest.param(
        "clamd.internal.example:3310", TcpAddress("clamd.internal.example", 3310), id="fqdn"
    ),
    pytest.param(" spamd:783 ", TcpAddress("spamd", 783), id="surrounding_blanks"),
    pytest.param("[::1]:3310", TcpAddress("::1", 3310), id="ipv6"),
    pytest.param("[2001:DB8::0001]:783", TcpAddress("2001:db8::1", 783), id="ipv6_normalised"),
    pytest.param("/run/clamav/clamd.ctl", UnixAddress("/run/clamav/clamd.ctl"), id="absolute_path"),
    pytest.param("unix:/run/spamd.sock", UnixAddress("/run/spamd.sock"), id="unix_prefix"),
    pytest.param("unix:relative.sock", UnixAddress("relative.sock"), id="unix_relative"),
    pytest.param("127.0.0.1:65535", TcpAddress("127.0.0.1", 65535), id="highest_port"),
]


@pytest.mark.parametrize(("text", "expected"), GOOD)
def test_accepted_forms(text: str, expected: TcpAddress | UnixAddress) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("127.0.0.1:3310", "127.0.0.1:3310", id="ipv4"),
        pytest.param("[::1]:3310", "[::1]:3310", id="ipv6"),
        pytest.param("/run/c.sock", "unix:/run/c.sock", id="unix"),
    ],
)
def test_addresses_print_in_a_form_that_parses_back(text: str, expected: str) -> None:
    address = parse_address(text)
    assert str(address) == expected
    assert parse_address(str(address)) == address


def test_a_default_port_completes_a_bare_host() -> None:
    assert parse_address("localhost", default_port=783) == TcpAddress("localhost", 783)
    assert parse_address("[::1]", default_port=3310) == TcpAddress("::1", 3310)
    assert parse_address("localhost:1", default_port=783) == TcpAddress("localhost", 1)


BAD = [
    pytest.param("", "empty", id="empty"),
    pytest.param("   ", "empty", id="blank"),
    pytest.param("localhost", "missing ':PORT'", id="no_port"),
    pytest.param("localhost:", "port '' is not a number", id="empty_port"),
    pytest.param("localhost:0", "port '0' is not a number from 1 to 65535", id="port_zero"),
    pytest.param("localhost:65536", "from 1 to 65535", id="port_too_big"),
    pytest.param("localhost:http", "port 'http'", id="port_name"),
    pytest.param("localhost:٣٣١٠", "port", id="port_non_ascii_digits"),
    pytest.param("::1:3310", "an IPv6 address needs brackets", id="ipv6_without_brackets"),
    pytest.param("[::1:3310", "missing ']'", id="unclosed_bracket"),
    pytest.param("[::1]", "missing ':PORT' after ']'", id="ipv6_no_port"),
    pytest.param("[::1]3310", "missing ':PORT' after ']'", id="ipv6_no_colon"),
    pytest.param("[example.com]:3310", "is not an IPv6 address", id="bracketed_hostname"),
    pytest.param("tcp://127.0.0.1:3310", "a URL is not an address", id="url"),
    pytest.param("a:b:3310", "'a:b' is not a host name", id="colons_not_ipv6"),
    pytest.param("clamd host:3310", "is not a host name", id="space_in_host"),
    pytest.param("-clamd:3310", "is not a host name", id="leading_hyphen"),
    pytest.param(":3310", "is not a host name", id="no_host"),
    pytest.param("unix:", "no socket path", id="unix_without_path"),
    pytest.param("/" + "s" * 107, "at most 107 bytes", id="unix_path_too_long"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_junk_is_an_input_error_naming_the_setting(text: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_address(text, what="--clamd")
    assert str(caught.value).startswith(f"--clamd {text!r}: ")
    assert message in str(caught.value)
    assert "expected HOST:PORT, [IPv6]:PORT, /path/to.sock or unix:/path/to.sock" in str(
        caught.value
    )
