"""Prepended headers: order, Received layout, forged headers removed, original bytes kept."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import compat32

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inbound.core.verdicts import Verdict, Verdicts
from inbound.message.headers import (
    AuthDetails,
    DkimResult,
    ReceivedFacts,
    add_header,
    prepend_headers,
    strip_forged_headers,
)

HOST = "mx.inbound.example"
MESSAGE_ID = "0123456789abcdefghijklmnopqrstuvwxyz0123"
FACTS = ReceivedFacts(
    message_id=MESSAGE_ID,
    hostname=HOST,
    mail_from="alice@sender.example",
    rcpt_tos=("support@example.com",),
    helo="mail.sender.example",
    client_ip="203.0.113.5",
    rdns="mail.sender.example",
    tls=False,
    received_at=datetime(2026, 11, 23, 10, 0, 1, tzinfo=UTC),
    verdicts=Verdicts(spam=Verdict.PASS, virus=Verdict.FAIL),
)
PREPENDED = [
    "Return-Path",
    "Received",
    "X-SES-Spam-Verdict",
    "X-SES-Virus-Verdict",
    "Received-SPF",
    "Authentication-Results",
]
BODY = b"Hello,\r\n\r\nX-SES-Spam-Verdict: in the body stays\r\n"


def header_block(out: bytes) -> list[tuple[str, str]]:
    message = BytesParser(policy=compat32).parsebytes(out)
    return list(message.raw_items())


def value_of(out: bytes, name: str) -> str:
    return next(value for key, value in header_block(out) if key == name)


def test_prepended_in_spec_order_above_the_original() -> None:
    raw = b"From: a@b.example\r\nSubject: hi\r\n\r\n" + BODY
    out = prepend_headers(raw, FACTS)
    names = [name for name, _ in header_block(out)]
    assert names == [*PREPENDED, "From", "Subject"]
    assert out.endswith(raw)
    assert value_of(out, "Return-Path") == "<alice@sender.example>"
    assert value_of(out, "X-SES-Spam-Verdict") == "PASS"
    assert value_of(out, "X-SES-Virus-Verdict") == "FAIL"
    # Every prepended line ends in CRLF.
    top = out[: len(out) - len(raw)]
    assert top.count(b"\n") == top.count(b"\r\n")
    assert top.endswith(b"\r\n")


def test_received_layout_esmtp() -> None:
    out = prepend_headers(b"Subject: x\r\n\r\nbody\r\n", FACTS)
    received = value_of(out, "Received")
    assert received == (
        "from mail.sender.example (mail.sender.example [203.0.113.5])\r\n"
        f"\tby {HOST} with ESMTP id {MESSAGE_ID}\r\n"
        "\tfor <support@example.com>; Mon, 23 Nov 2026 10:00:01 +0000"
    )


def test_received_says_esmtps_under_tls_and_unknown_without_rdns() -> None:
    out = prepend_headers(b"\r\nbody", replace(FACTS, tls=True, rdns=None))
    received = value_of(out, "Received")
    assert f"by {HOST} with ESMTPS id {MESSAGE_ID}" in received
    assert "(unknown [203.0.113.5])" in received


def test_ipv6_address_literal() -> None:
    out = prepend_headers(b"", replace(FACTS, client_ip="2001:db8::1"))
    assert "[IPv6:2001:db8::1]" in value_of(out, "Received")
    assert "client-ip=2001:db8::1;" in value_of(out, "Received-SPF")


@pytest.mark.parametrize(
    ("rcpts", "has_for"),
    [
        pytest.param(("one@example.com",), True, id="one_recipient"),
        pytest.param(("one@example.com", "two@example.com"), False, id="two_recipients"),
        pytest.param((), False, id="no_recipient"),
    ],
)
def test_for_clause_only_with_one_recipient(rcpts: tuple[str, ...], has_for: bool) -> None:
    received = value_of(prepend_headers(b"", replace(FACTS, rcpt_tos=rcpts)), "Received")
    assert ("for <one@example.com>;" in received) is has_for
    assert "two@example.com" not in received
    assert received.endswith("Mon, 23 Nov 2026 10:00:01 +0000")


def test_null_sender() -> None:
    out = prepend_headers(b"", replace(FACTS, mail_from=""))
    assert value_of(out, "Return-Path") == "<>"
    # RFC 7208 §2.4: SPF checks postmaster@HELO for the null sender.
    assert "envelope-from=postmaster@mail.sender.example;" in value_of(out, "Received-SPF")


def test_not_checked_auth_results() -> None:
    out = prepend_headers(b"", FACTS)
    results = " ".join(value_of(out, "Authentication-Results").split())
    assert results == (
        f"{HOST}; spf=none smtp.mailfrom=alice@sender.example; dkim=none; dmarc=none"
    )
    spf = value_of(out, "Received-SPF")
    assert spf.startswith(f"none ({HOST}: ")
    assert spf.endswith(
        "client-ip=203.0.113.5; envelope-from=alice@sender.example; helo=mail.sender.example;"
    )


def test_auth_results_with_details() -> None:
    auth = AuthDetails(
        spf="softfail",
        spf_explanation="domain of sender.example does not designate 203.0.113.5 (as permitted)",
        dkim=(DkimResult("pass", "sender.example", "s1"), DkimResult("fail", "esp.example", "k")),
        dmarc="pass",
        from_domain="sender.example",
    )
    out = prepend_headers(b"", replace(FACTS, auth=auth))
    results = " ".join(value_of(out, "Authentication-Results").split())
    assert results == (
        f"{HOST}; spf=softfail smtp.mailfrom=alice@sender.example;"
        " dkim=pass header.d=sender.example header.s=s1;"
        " dkim=fail header.d=esp.example header.s=k;"
        " dmarc=pass header.from=sender.example"
    )
    spf = value_of(out, "Received-SPF")
    # Parentheses in the explanation are escaped so the comment stays one comment.
    assert spf.startswith(f"softfail ({HOST}: domain of sender.example does not designate")
    assert "\\(as permitted\\))" in spf


def test_forged_headers_removed_others_kept_byte_identical() -> None:
    kept_top = b"Received: from relay.example by mx.example; Mon, 23 Nov 2026 09:59:00 +0000\r\n"
    forged_spam = b"X-SES-Spam-Verdict: PASS\r\n"
    forged_virus = b"x-ses-virus-verdict:PASS\r\n"
    forged_ar = (
        f"Authentication-Results: {HOST.upper()};\r\n"
        "\tspf=pass smtp.mailfrom=ceo@bank.example;\r\n"
        "\tdkim=pass header.d=bank.example\r\n"
    ).encode()
    other_ar = b"Authentication-Results: relay.example;\r\n spf=fail smtp.mailfrom=x@y.example\r\n"
    rest = b"From: ceo@bank.example\r\nSubject: wire money\r\n\r\n" + BODY
    raw = kept_top + forged_spam + forged_ar + other_ar + forged_virus + rest
    out = prepend_headers(raw, FACTS)
    assert out.endswith(kept_top + other_ar + rest)
    items = header_block(out)
    assert [v for k, v in items if k.lower() == "x-ses-spam-verdict"] == ["PASS"]
    assert [v for k, v in items if k.lower() == "x-ses-virus-verdict"] == ["FAIL"]
    results = [v for k, v in items if k == "Authentication-Results"]
    assert len(results) == 2
    assert results[0].startswith(f"{HOST};")
    assert results[1].startswith("relay.example;")
    assert b"ceo@bank.example;" not in out.split(b"\r\n\r\n")[0].replace(b"From: ceo", b"")


def test_auth_results_with_comment_and_version_is_recognised() -> None:
    raw = f"Authentication-Results: (forged) {HOST} 1; dkim=pass\r\nSubject: x\r\n\r\n".encode()
    assert strip_forged_headers(raw, HOST) == b"Subject: x\r\n\r\n"


def test_auth_results_of_a_longer_name_is_kept() -> None:
    raw = f"Authentication-Results: {HOST}.evil.example; dkim=pass\r\n\r\n".encode()
    assert strip_forged_headers(raw, HOST) == raw


def test_lf_only_input() -> None:
    raw = (
        b"X-SES-Spam-Verdict: PASS\nFrom: a@b.example\nSubject: lf\n\nbody\nX-SES-Spam-Verdict: x\n"
    )
    out = prepend_headers(raw, FACTS)
    assert out.endswith(b"From: a@b.example\nSubject: lf\n\nbody\nX-SES-Spam-Verdict: x\n")
    names = [name for name, _ in header_block(out)]
    assert names == [*PREPENDED, "From", "Subject"]


def test_no_separator_input() -> None:
    raw = b"From: a@b.example\r\nX-SES-Virus-Verdict: PASS\r\nthis is the body, no blank line\r\n"
    out = prepend_headers(raw, FACTS)
    assert out.endswith(b"From: a@b.example\r\nthis is the body, no blank line\r\n")


def test_headers_only_input_without_final_newline() -> None:
    raw = b"Subject: x\r\nX-SES-Spam-Verdict: PASS"
    assert strip_forged_headers(raw, HOST) == b"Subject: x\r\n"


@pytest.mark.parametrize("raw", [b"", b"\r\n", b"\n", b"just a body\r\n", b"\r\n\r\nbody"])
def test_empty_or_headerless_input(raw: bytes) -> None:
    out = prepend_headers(raw, FACTS)
    assert out.endswith(raw)
    assert [name for name, _ in header_block(out)][:6] == PREPENDED


def test_body_is_never_touched() -> None:
    raw = b"Subject: x\r\n\r\nX-SES-Spam-Verdict: PASS\r\nAuthentication-Results: " + HOST.encode()
    assert strip_forged_headers(raw, HOST) == raw


def test_hostile_helo_cannot_inject_a_header() -> None:
    hostile = replace(
        FACTS,
        helo="evil.example\r\nX-SES-Spam-Verdict: PASS\r\n",
        mail_from="x@evil.example\nAuthentication-Results: " + HOST + "; dkim=pass",
        rdns="r\rdns",
    )
    out = prepend_headers(b"Subject: x\r\n\r\nbody", hostile)
    items = header_block(out)
    assert [name for name, _ in items] == [*PREPENDED, "Subject"]
    assert [v for k, v in items if k == "X-SES-Spam-Verdict"] == ["PASS"]
    top = out[: out.index(b"Subject: x")]
    for line in top.split(b"\r\n"):
        assert b"\r" not in line
        assert b"\n" not in line
    # A ";" in the MAIL FROM cannot add a result to our Authentication-Results.
    results = value_of(out, "Authentication-Results")
    assert 'smtp.mailfrom="x@evil.example?Authentication-Results: ' in results


def test_surrogate_escaped_helo_does_not_raise() -> None:
    out = prepend_headers(b"", replace(FACTS, helo="h\udcffelo", mail_from="\udc80@x.example"))
    assert b"from h?elo (" in out
    assert b"Return-Path: <?@x.example>" in out


def test_add_header_on_top() -> None:
    raw = b"Subject: x\r\n\r\nbody"
    assert add_header(raw, "X-Rule", "support") == b"X-Rule: support\r\n" + raw
    assert add_header(raw, "X-Rule", "a\r\nB: c") == b"X-Rule: a??B: c\r\n" + raw
    with pytest.raises(ValueError, match="header field name"):
        add_header(raw, "Bad Name", "x")


@given(st.binary(max_size=400))
def test_never_raises_and_keeps_the_tail(raw: bytes) -> None:
    out = prepend_headers(raw, FACTS)
    stripped = strip_forged_headers(raw, HOST)
    assert out.endswith(stripped)
    assert len(stripped) <= len(raw)


FIELD_LINES = [b"A: 1\r\n", b" fold\r\n", b"X-SES-Spam-Verdict: F\r\n", b"\r\n", b"b\n"]


@given(st.lists(st.sampled_from(FIELD_LINES)))
def test_only_whole_forged_fields_are_removed(lines: list[bytes]) -> None:
    raw = b"".join(lines)
    stripped = strip_forged_headers(raw, HOST)
    assert stripped.count(b"A: 1") == raw.count(b"A: 1")
    assert strip_forged_headers(stripped, HOST) == stripped
    # In the header block (up to the first line that is not a field) no forged field survives.
    for line in stripped.splitlines(keepends=True):
        assert not line.startswith(b"X-SES")
        if not line.startswith((b"A:", b" ")):
            break
