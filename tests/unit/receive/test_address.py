"""The path and parameter grammar of MAIL FROM and RCPT TO (RFC 5321 §4.1.2, RFC 6531)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inbound.receive.address import (
    MailParams,
    ParamError,
    Path,
    mail_params,
    parse_mailbox,
    parse_params,
    parse_path,
)

ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
atoms = st.text(alphabet=ATEXT, min_size=1, max_size=12)
local_parts = st.lists(atoms, min_size=1, max_size=4).map(".".join)
labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
domains = st.lists(labels, min_size=1, max_size=4).map(".".join)
mailboxes = st.builds(lambda local, domain: f"{local}@{domain}", local_parts, domains)


@settings(max_examples=300)
@given(mailboxes, st.sampled_from(["", " SIZE=10", " BODY=8BITMIME SMTPUTF8"]))
def test_a_mailbox_in_brackets_is_itself(mailbox: str, params: str) -> None:
    assert parse_path(f"<{mailbox}>{params}") == Path(mailbox, params.strip())
    assert parse_path(f"{mailbox}{params}") == Path(mailbox, params.strip())


@given(mailboxes, st.lists(domains, min_size=1, max_size=3))
def test_a_source_route_is_accepted_and_dropped(mailbox: str, hops: list[str]) -> None:
    route = ",".join(f"@{hop}" for hop in hops)
    assert parse_path(f"<{route}:{mailbox}>") == Path(mailbox, "")


@given(local_parts, domains)
def test_quotes_that_are_not_needed_are_dropped(local: str, domain: str) -> None:
    assert parse_mailbox(f'"{local}"@{domain}') == f"{local}@{domain}"


@settings(max_examples=500)
@given(st.text(max_size=80))
def test_any_text_parses_or_is_refused_without_an_exception(text: str) -> None:
    path = parse_path(text)
    if path is not None:
        assert ">" not in path.address or '"' in path.address
        assert "\r" not in path.address
        assert "\n" not in path.address


@settings(max_examples=300)
@given(st.binary(max_size=40))
def test_undecodable_bytes_are_never_an_address(raw: bytes) -> None:
    text = raw.decode("utf-8", "surrogateescape")
    path = parse_path(f"<a{text}@example.com>")
    if path is not None:
        assert path.address.encode("utf-8")  # no surrogates: valid UTF-8


@pytest.mark.parametrize(
    ("arg", "address"),
    [
        ("<>", ""),
        ("<> SIZE=1", ""),
        ("<a@[192.0.2.1]>", "a@[192.0.2.1]"),
        ("<a@[IPv6:2001:db8::1]>", "a@[IPv6:2001:db8::1]"),
        ('<"a b"@example.com>', '"a b"@example.com'),
        ('<"a\\"b"@example.com>', '"a\\"b"@example.com'),
        ("<ü@exämple.com>", "ü@exämple.com"),  # RFC 6531
        ("<Postmaster>", "Postmaster"),  # RFC 5321 §4.1.1.3
        ("< a@example.com >", "a@example.com"),
        ("<a..b@example.com>", "a..b@example.com"),  # obsolete, still sent
    ],
)
def test_accepted(arg: str, address: str) -> None:
    path = parse_path(arg)
    assert path is not None
    assert path.address == address


@pytest.mark.parametrize(
    "arg",
    [
        "<",
        "<a@b",
        "<a@>",
        "<@b>",
        "<a b@c>",
        "<a(comment)@c>",
        "<a @ c>",
        "<a@[x]>",
        "<a@[1.2.3]>",
        "<a@b..c>",
        "<<a@b>>",
        "<@r:>",
        "<@:a@b>",
        "<a\udcff@b>",
        '<"a@b>',
        "<a@" + "x" * 64 + ".example>",
    ],
)
def test_refused(arg: str) -> None:
    assert parse_path(arg) is None


def test_parameters() -> None:
    assert mail_params("", 100) == MailParams()
    assert mail_params("SIZE=100 BODY=8BITMIME SMTPUTF8", 100) == MailParams(100, "8BITMIME", True)
    assert mail_params("size=7 body=7bit", 100) == MailParams(7, "7BIT", False)
    assert mail_params("SIZE=101", 100) is ParamError.TOO_BIG
    assert mail_params("SIZE=x", 100) is ParamError.SYNTAX
    assert mail_params("SIZE=", 100) is ParamError.SYNTAX
    assert mail_params("SIZE=\u0661", 100) is ParamError.SYNTAX  # a digit, not an ASCII one
    assert mail_params("BODY=BINARYMIME", 100) is ParamError.BODY
    assert mail_params("SMTPUTF8=YES", 100) is ParamError.SMTPUTF8_VALUE
    assert mail_params("AUTH=<>", 100) is ParamError.UNKNOWN  # RFC 4954 is not offered
    assert mail_params("X-FOO=1", 100) is ParamError.SYNTAX
    assert mail_params("FOO=1", 100) is ParamError.UNKNOWN
    assert parse_params("NOTIFY=NEVER") == {"NOTIFY": "NEVER"}
    assert parse_params("=") is None
