"""Rule sets and messages for the runner's unit tests."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from inbound.core.envelope import Connection, Envelope
from inbound.core.message import MessageFacts
from inbound.core.verdicts import Verdicts
from inbound.rules.compiled import CompiledRuleSet
from inbound.rules.evaluate import Evaluation
from inbound.rules.load import parse_rule_set
from inbound.run.context import RunSubject

RECEIVED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
RAW = b"From: a@sender.test\r\nSubject: hi\r\n\r\nbody\r\n"
FUNCTION = "arn:aws:lambda:us-east-1:123456789012:function:{name}"


def compiled(rules: str) -> CompiledRuleSet:
    text = f"version: 1\nname: test\ndomains: [example.com]\nrules:\n{rules}"
    return CompiledRuleSet.build(parse_rule_set(text, str(Path("rules.yaml"))).rule_set)


def walk(rules: CompiledRuleSet, message_id: str = "m1") -> Evaluation:
    return Evaluation(
        rules,
        message_id=message_id,
        connection=Connection.of("192.0.2.1", "client.test"),
        envelope=Envelope("a@sender.test", ("user@example.com",)),
        message=MessageFacts(size=len(RAW)),
        verdicts=Verdicts(),
    )


def subject(message_id: str = "m1", raw: bytes = RAW) -> RunSubject:
    return RunSubject(
        message_id=message_id,
        mail_from="a@sender.test",
        base=raw,
        received_at=RECEIVED,
        processing_ms=lambda: 5,
        hostname="mx.test",
    )
