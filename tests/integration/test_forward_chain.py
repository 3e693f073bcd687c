"""The chain harness itself (`forward_chain`): its Postfix relays, its destination keeps what
arrives with the verdicts DNS from the chain's zone gives, its senders come from 127.0.0.2."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.forward_chain import (
    FORWARDER_IP,
    SENDER_IP,
    MailDomain,
    forward_chain,
    send,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

PLAIN_RULES = """\
version: 1
name: forwarder
domains: [fwd.chain.test]
rules: []
"""


def test_a_message_through_the_private_postfix_arrives_with_its_verdicts(tmp_path: Path) -> None:
    sender = MailDomain("sender.test", ips=(FORWARDER_IP,), dmarc="reject")
    elsewhere = MailDomain("elsewhere.test", ips=(SENDER_IP,), dmarc="reject")
    dest = MailDomain("dest.test")
    with forward_chain(
        tmp_path, forwarder_rules=PLAIN_RULES, domains=[sender, elsewhere, dest], postfix=True
    ) as chain:
        assert chain.postfix is not None
        signed = sender.sign(
            b"From: Alice <alice@sender.test>\r\nTo: bob@dest.test\r\nSubject: hi\r\n\r\nhello\r\n"
        )
        send(chain.postfix.port, "alice@sender.test", ["bob@dest.test"], signed)
        unsigned = b"From: eve@elsewhere.test\r\nTo: bob@dest.test\r\nSubject: x\r\n\r\nx\r\n"
        send(chain.postfix.port, "eve@elsewhere.test", ["bob@dest.test"], unsigned)
        by_sender = {a.mail_from: a for a in chain.wait_arrivals(2)}
    # Postfix hands them on in its own order.
    first, second = by_sender["alice@sender.test"], by_sender["eve@elsewhere.test"]
    assert first.rcpt_to == ("bob@dest.test",)
    # Postfix connects from 127.0.0.1: SPF passes for sender.test, fails for elsewhere.test.
    assert first.verdicts["spf"] == "PASS"
    assert first.verdicts["dkim"] == "PASS"
    assert first.verdicts["dmarc"] == "PASS"
    assert first.content.endswith(signed.split(b"\r\n\r\n", 1)[1])
    assert second.verdicts["spf"] == "FAIL"
    assert second.verdicts["dmarc"] == "FAIL"
    assert first.headers["Subject"] == "hi"
