"""The forward action end to end (SPEC section 3b), on the loopback chain of `forward_chain`:
a sender → `inbound serve` forwarding → (a private Postfix) → `inbound serve` as the
destination MX, every domain answered by one zone file. What the destination measured (SPF,
DKIM, DMARC) and what it stored is what these tests read.
"""

from __future__ import annotations

from email import message_from_bytes
from email.utils import getaddresses
from pathlib import Path

import pytest

from tests.integration.forward_chain import (
    FORWARDER_IP,
    SENDER_IP,
    Arrival,
    MailDomain,
    forward_chain,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

FORWARDER_RULES = """\
version: 1
name: forwarder
domains: [fwd.chain.test]
rules:
  - name: team
    recipients: ['re:(?P<who>[a-z]+)@fwd\\.chain\\.test']
    actions:
      - type: forward
        to: ['\\g<who>@dest.test']
        from_mode: {mode}
        from_address: forwarder@fwd.chain.test
        srs_domain: srs.fwd.chain.test
        dkim: {{domain: fwd.chain.test, selector: chain, key_file: {key}}}
"""


def message(sender: str, name: str = "Alice", extra: bytes = b"") -> bytes:
    return (
        f"From: {name} <{sender}>\r\nTo: team@fwd.chain.test\r\nSubject: forwarded\r\n".encode()
        + extra
        + b"Date: Sun, 06 Dec 2026 12:00:00 +0000\r\nMessage-ID: <m1@sender.test>\r\n"
        + b"\r\nHello through the forward.\r\n"
    )


def chain_domains(sender_dmarc: str = "reject") -> list[MailDomain]:
    return [
        MailDomain("sender.test", ips=(SENDER_IP,), dmarc=sender_dmarc),
        MailDomain("lax.test", ips=(SENDER_IP,), dmarc="none"),
        MailDomain("fwd.chain.test", ips=(FORWARDER_IP,), dmarc="reject"),
        MailDomain("srs.fwd.chain.test", ips=(FORWARDER_IP,), dmarc=None),
        MailDomain("dest.test"),
    ]


def rules_for(tmp_path: Path, mode: str, domains: list[MailDomain]) -> str:
    forwarder = next(d for d in domains if d.name == "fwd.chain.test")
    return FORWARDER_RULES.format(mode=mode, key=forwarder.pem_file(tmp_path))


def addresses(arrival: Arrival, name: str) -> list[tuple[str, str]]:
    return getaddresses([str(v) for v in arrival.headers.get_all(name) or []])


def assert_preserved(arrival: Arrival, original: bytes) -> None:
    """Byte-identical below the trace headers, From and Reply-To untouched, nothing added."""
    assert arrival.content.endswith(original)
    assert addresses(arrival, "From") == addresses_of(original, "From")
    assert arrival.headers.get_all("X-Original-From") is None
    assert arrival.headers.get_all("X-Original-To") is None
    assert arrival.mail_from.upper().startswith("SRS0=")
    assert arrival.mail_from.endswith("@srs.fwd.chain.test")
    # One Return-Path: the destination's; the forwarder's own was not sent on.
    assert len(arrival.headers.get_all("Return-Path")) == 1


def addresses_of(raw: bytes, name: str) -> list[tuple[str, str]]:
    return getaddresses([str(v) for v in message_from_bytes(raw).get_all(name) or []])


def assert_rewritten(arrival: Arrival, sender: str) -> None:
    assert addresses(arrival, "From") == [("Alice via fwd.chain.test", "forwarder@fwd.chain.test")]
    assert addresses(arrival, "Reply-To") == [("Alice", sender)]
    assert addresses(arrival, "X-Original-From") == [("Alice", sender)]
    assert addresses(arrival, "X-Original-To") == [("", "team@fwd.chain.test")]
    assert arrival.mail_from == "forwarder@fwd.chain.test"
    assert arrival.headers["Sender"] is None


def test_preserve_of_a_signed_message_passes_dkim_and_dmarc_and_spf_for_the_srs_domain(
    tmp_path: Path,
) -> None:
    domains = chain_domains()
    sender = domains[0]
    original = sender.sign(message("alice@sender.test"))
    with forward_chain(
        tmp_path, forwarder_rules=rules_for(tmp_path, "preserve", domains), domains=domains
    ) as chain:
        chain.send("alice@sender.test", ["team@fwd.chain.test"], original)
        (arrival,) = chain.wait_arrivals(1)
    assert arrival.rcpt_to == ("team@dest.test",)
    assert arrival.verdicts["spf"] == "PASS"  # for srs.fwd.chain.test, from the forwarder's IP
    assert arrival.verdicts["dkim"] == "PASS"  # the sender's own signature, untouched
    assert arrival.verdicts["dmarc"] == "PASS"
    assert_preserved(arrival, original)
    assert arrival.headers["X-Inbound-Forwarded"] == "fwd.chain.test"
    # The forwarder signed it too (d=fwd.chain.test), above everything it sent.
    signatures = [str(s) for s in arrival.headers.get_all("DKIM-Signature")]
    assert any("d=fwd.chain.test" in s for s in signatures)


def test_rewrite_passes_spf_dkim_and_dmarc_for_the_forwarders_domain(tmp_path: Path) -> None:
    domains = chain_domains()
    sender = domains[0]
    original = sender.sign(message("alice@sender.test", extra=b"Sender: list@sender.test\r\n"))
    with forward_chain(
        tmp_path, forwarder_rules=rules_for(tmp_path, "rewrite", domains), domains=domains
    ) as chain:
        chain.send("alice@sender.test", ["team@fwd.chain.test"], original)
        (arrival,) = chain.wait_arrivals(1)
    assert arrival.verdicts["spf"] == "PASS"
    assert arrival.verdicts["dkim"] == "PASS"  # the forwarder's signature, aligned with From
    assert arrival.verdicts["dmarc"] == "PASS"
    assert_rewritten(arrival, "alice@sender.test")
    signatures = [str(s) for s in arrival.headers.get_all("DKIM-Signature")]
    assert len(signatures) == 1  # the sender's was removed: From changed, it cannot verify
    assert "d=fwd.chain.test" in signatures[0]
    # The body is the sender's, untouched.
    assert arrival.content.endswith(b"\r\n\r\nHello through the forward.\r\n")


def test_when_dmarc_rewrites_p_reject_without_aligned_dkim_and_preserves_p_none(
    tmp_path: Path,
) -> None:
    """Both unsigned and passing SPF at the forwarder (so DMARC passed there); at the
    destination SPF is the forwarder's, so only the p=reject one would fail: it is rewritten."""
    domains = chain_domains()
    strict = message("alice@sender.test")
    lax = message("alice@lax.test")
    with forward_chain(
        tmp_path,
        forwarder_rules=rules_for(tmp_path, "when_dmarc", domains),
        domains=domains,
        postfix=True,  # a real MTA carries these forwards
    ) as chain:
        chain.send("alice@sender.test", ["team@fwd.chain.test"], strict)
        chain.send("alice@lax.test", ["team@fwd.chain.test"], lax)
        arrived = chain.wait_arrivals(2)
        assert chain.postfix is not None
        assert chain.postfix.sent() >= 2
    by_from = {a.headers["X-Original-From"] or a.headers["From"]: a for a in arrived}
    rewritten = by_from["Alice <alice@sender.test>"]
    preserved = by_from["Alice <alice@lax.test>"]
    assert_rewritten(rewritten, "alice@sender.test")
    assert rewritten.verdicts["dmarc"] == "PASS"
    assert_preserved(preserved, lax)
    assert preserved.verdicts["spf"] == "PASS"  # the SRS domain's
    assert preserved.verdicts["dmarc"] == "FAIL"  # p=none: delivered all the same
