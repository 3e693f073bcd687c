"""Every real message of fixtures/corpus forwarded in `preserve` mode (SPEC section 3b) arrives
at the destination byte-identical below the trace headers, and its DKIM results there are the
results the forwarder measured: a preserved forward never breaks a signature."""

from __future__ import annotations

import re
import smtplib
from collections.abc import Callable
from pathlib import Path

import pytest

from inbound.message.headers import header_fields
from tests.integration.forward_chain import (
    FORWARDER_IP,
    SENDER_IP,
    Arrival,
    MailDomain,
    forward_chain,
)
from tests.integration.receiver import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REAL = ROOT / "fixtures" / "corpus" / "eml" / "real"
# Refused by any receiver, rightly (test_corpus_receive.py): a line over 1000 octets.
REFUSED = {"sisimai__ses_sns_bounce_notification_email.eml"}
FILES = sorted(p for p in REAL.glob("*.eml") if p.name not in REFUSED)
DKIM_ZONE = ROOT / "fixtures" / "dns" / "dkim-corpus.zone"

RULES = """\
version: 1
name: forwarder
domains: [fwd.chain.test]
rules:
  - name: everyone
    recipients: ['re:(?P<who>[a-z]+)@fwd\\.chain\\.test']
    actions:
      - type: forward
        to: ['\\g<who>@dest.test']
        from_mode: preserve
        srs_domain: srs.fwd.chain.test
"""

fix_eols: Callable[[str], str] = smtplib._fix_eols  # type: ignore[attr-defined]
DKIM_ENTRY = re.compile(r"dkim=([a-z]+)(?: header\.d=(\S+?))?(?: header\.s=(\S+?))?(?:;|$)")


def on_the_wire(raw: bytes) -> bytes:
    """The message as a client sends it: CRLF line endings and a final CRLF."""
    wire = fix_eols(raw.decode("latin-1")).encode("latin-1")
    return wire if wire.endswith(b"\r\n") else wire + b"\r\n"


def below_trace(content: bytes, wire: bytes) -> bool:
    """`content` is `wire` under the trace headers only: the last header above it is the
    forwarder's Authentication-Results (two corpus messages end alike: a suffix is not enough)."""
    if not content.endswith(wire):
        return False
    fields = header_fields(content[: len(content) - len(wire)])
    return (
        bool(fields)
        and fields[-1][2].lower() == "authentication-results"
        and fields[-1][3].strip().startswith(b"fwd.chain.test;")
    )


def dkim_results(arrival: Arrival, authserv_id: str) -> list[tuple[str, ...]]:
    """The dkim= entries of the Authentication-Results header written by `authserv_id`."""
    for value in arrival.headers.get_all("Authentication-Results") or []:
        text = " ".join(str(value).split())
        if text.split(";", 1)[0].strip() == authserv_id:
            return [m.groups("") for m in DKIM_ENTRY.finditer(text)]
    raise AssertionError(f"no Authentication-Results of {authserv_id}")


def test_the_corpus_forwarded_in_preserve_mode_arrives_intact(tmp_path: Path) -> None:
    assert len(FILES) > 60
    domains = [
        MailDomain("sender.test", ips=(SENDER_IP,), dmarc=None),
        MailDomain("fwd.chain.test", ips=(FORWARDER_IP,)),
        MailDomain("srs.fwd.chain.test", ips=(FORWARDER_IP,), dmarc=None),
        MailDomain("dest.test"),
    ]
    wires = {path.name: on_the_wire(path.read_bytes()) for path in FILES}
    with forward_chain(
        tmp_path, forwarder_rules=RULES, domains=domains, zone_extra=DKIM_ZONE.read_text()
    ) as chain:
        with smtplib.SMTP(
            "127.0.0.1", chain.forwarder.port, source_address=(SENDER_IP, 0), timeout=30
        ) as client:
            client.ehlo("mail.sender.test")
            for wire in wires.values():
                client.sendmail("corpus@sender.test", ["team@fwd.chain.test"], wire)
        arrived = chain.wait_arrivals(len(wires), deadline=240)
    assert len(arrived) == len(wires)
    signed = passed = 0
    for name, wire in wires.items():
        # Two files of the corpus are the same message (RFC 8463's example, from two projects).
        copies = sum(1 for other in wires.values() if other == wire)
        matches = [a for a in arrived if below_trace(a.content, wire)]
        assert len(matches) == copies, f"{name}: not byte-identical below the trace headers"
        for arrival in matches:
            at_forwarder = dkim_results(arrival, "fwd.chain.test")
            at_destination = dkim_results(arrival, "mx.destination.test")
            assert at_destination == at_forwarder, name
        signed += any(result != ("none", "", "") for result in at_forwarder)
        passed += any(result[0] == "pass" for result in at_forwarder)
    assert signed >= 5  # the corpus's signed messages were among them,
    assert passed >= 3  # and signatures that verify (the keys of fixtures/dns/dkim-corpus.zone)
