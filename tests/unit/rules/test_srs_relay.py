"""SRS recipients in the rules (SPEC section 3b): which rules need secrets, where SRS addresses
are accepted, the internal relay rule, and the relay step that verifies before it sends."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from inbound.core import reply as replies
from inbound.core.envelope import Connection, Envelope
from inbound.core.errors import PermanentActionError
from inbound.core.message import MessageFacts
from inbound.core.verdicts import Verdicts
from inbound.rules.decide import answer_recipient, check_srs
from inbound.rules.evaluate import Evaluation
from inbound.rules.srs_relay import RELAY_RULE_NAME, needs_srs, srs_domains
from inbound.run.ledgers import MemoryLedger
from inbound.run.runner import run_message
from inbound.srs import SrsKeys, srs_forward
from inbound.targets.memory import MemoryServices
from tests.unit.run.helpers import RECEIVED, compiled, subject

KEYS = SrsKeys((b"unit secret",))
RULES = """\
  - name: catch-all
    actions:
      - {type: s3, bucket: mail}
  - name: preserve
    recipients: [team@example.com]
    actions:
      - {type: forward, to: [a@dest.test], from_mode: preserve, srs_domain: Fwd.Example.NET}
  - name: by-dmarc
    recipients: [ops@example.com]
    actions:
      - {type: forward, to: [b@dest.test], from_address: f@example.com, srs_domain: bounces.example.com}
  - name: rewrite
    recipients: [sales@example.com]
    actions:
      - {type: forward, to: [c@dest.test], from_mode: rewrite, from_address: f@example.com}
  - name: ses
    recipients: [help@example.com]
    actions:
      - {type: forward, to: [d@dest.test], via: ses, from_address: f@example.com}
  - name: retired
    enabled: false
    recipients: [old@example.com]
    actions:
      - {type: forward, to: [e@dest.test], from_mode: preserve, srs_domain: old.example.org}
"""


def test_the_rules_that_need_secrets_and_the_srs_domains() -> None:
    rules = compiled(RULES)
    assert needs_srs(rules.model) == ["preserve", "by-dmarc"]
    expected = {"fwd.example.net", "bounces.example.com", "old.example.org"}
    assert srs_domains(rules.model) == expected
    # The relay rule comes after the file's rules: their positions (step keys) do not move.
    assert [r.name for r in rules.rules] == [
        "catch-all", "preserve", "by-dmarc", "rewrite", "ses", "retired", RELAY_RULE_NAME,
    ]  # fmt: skip
    assert rules.srs_rule == 6
    assert compiled("  - name: plain\n    actions: [{type: stop}]\n").srs_rule is None


def test_an_srs_address_goes_to_the_relay_rule_whatever_else_matches() -> None:
    rules = compiled(RULES)
    inside = srs_forward("alice@sender.test", "bounces.example.com", KEYS, RECEIVED)
    outside = srs_forward("alice@sender.test", "fwd.example.net", KEYS, RECEIVED)
    for address in (inside, outside, outside.lower()):
        decision, matched = answer_recipient(rules, address, tls=False)
        assert decision.reply == replies.RECIPIENT_OK
        assert matched == (6,)
    # Not tagged SRS: the file's rules decide (the catch-all inside, nothing outside).
    assert answer_recipient(rules, "x@bounces.example.com", tls=False)[1] == (0,)
    assert answer_recipient(rules, "x@fwd.example.net", tls=False)[0].reply == replies.RELAY_DENIED


def test_check_srs_refuses_what_does_not_verify() -> None:
    rules = compiled(RULES)
    good = srs_forward("alice@sender.test", "fwd.example.net", KEYS, RECEIVED)
    assert check_srs(rules, good, KEYS, RECEIVED) is None
    assert check_srs(rules, "x@fwd.example.net", KEYS, RECEIVED) is None  # not SRS
    for address, keys, days, why in [
        (good, SrsKeys((b"other",)), 0, "SrsForged"),
        (good, KEYS, 22, "SrsExpired"),
        ("SRS0=x@fwd.example.net", KEYS, 0, "NotSrs"),
        (good, None, 0, "INBOUND_SRS_SECRETS is not set"),
    ]:
        refused = check_srs(rules, address, keys, RECEIVED + timedelta(days=days))
        assert refused is not None
        assert refused.reply == replies.SRS_INVALID
        assert refused.reason.startswith(why)


def relay_walk(recipients: tuple[str, ...]) -> Evaluation:
    return Evaluation(
        compiled(RULES),
        message_id="m1",
        connection=Connection.of("192.0.2.1", "mx.dest.test"),
        envelope=Envelope("", recipients),
        message=MessageFacts(size=10),
        verdicts=Verdicts(),
    )


def test_the_relay_step_sends_from_the_null_sender_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INBOUND_SRS_SECRETS", "unit secret")
    address = srs_forward("Alice@sender.test", "fwd.example.net", KEYS, RECEIVED)
    fakes = MemoryServices()
    ledger = MemoryLedger()
    result = asyncio.run(run_message(relay_walk((address,)), subject(), fakes.services, ledger))
    assert result.failed is None
    [sent] = fakes.outbound.sent
    assert (sent.mail_from, sent.rcpt_to, sent.index) == ("", ("Alice@sender.test",), 600000)
    # A retry replays the recorded step: nothing is sent again.
    asyncio.run(run_message(relay_walk((address,)), subject(), fakes.services, ledger))
    assert len(fakes.outbound.sent) == 1


def test_the_relay_step_never_sends_what_it_did_not_sign(monkeypatch: pytest.MonkeyPatch) -> None:
    # The Lambda handler has no RCPT check: the step verifies again, as of the arrival.
    monkeypatch.setenv("INBOUND_SRS_SECRETS", "a newer secret")
    address = srs_forward("alice@sender.test", "fwd.example.net", KEYS, RECEIVED)
    fakes = MemoryServices()
    result = asyncio.run(
        run_message(relay_walk((address,)), subject(), fakes.services, MemoryLedger())
    )
    assert isinstance(result.failed, PermanentActionError)
    assert "SrsForged" in str(result.failed)
    assert fakes.outbound.sent == []
    monkeypatch.delenv("INBOUND_SRS_SECRETS")
    result = asyncio.run(
        run_message(relay_walk((address,)), subject(), fakes.services, MemoryLedger())
    )
    assert isinstance(result.failed, PermanentActionError)
    assert fakes.outbound.sent == []
