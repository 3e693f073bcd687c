"""The evaluator driven step by step: the order of steps, the decision at the end of DATA (up to
the first request_response Lambda), and the protocol (one outcome per step)."""

from __future__ import annotations

import pytest

from inbound.core import reply as replies
from inbound.core.envelope import Connection, Envelope
from inbound.core.message import MessageFacts
from inbound.core.plan import Plan
from inbound.core.steps import CONTINUE, Outcome
from inbound.core.verdicts import Verdicts
from inbound.rules.evaluate import evaluate, results_unknown
from tests.unit.run.helpers import FUNCTION, compiled, walk

ASK = FUNCTION.format(name="ask")
BOUNCE = (
    '{type: bounce, smtp_reply_code: "550", status_code: "5.7.1", message: "No", '
    "sender: postmaster@example.com}"
)


def in_session(actions: str) -> Plan:
    rules = compiled(f"  - name: r\n    actions:\n{actions}")
    return evaluate(
        rules,
        message_id="m1",
        connection=Connection.of("192.0.2.1", "client.test"),
        envelope=Envelope("a@sender.test", ("user@example.com",)),
        message=MessageFacts(size=10),
        verdicts=Verdicts(),
        lambda_results=results_unknown,
    )


def test_a_bounce_first_answers_data_in_the_session() -> None:
    plan = in_session(f"      - {BOUNCE}\n")
    assert plan.data_reply is not None
    assert plan.data_reply.code == 550
    assert plan.session_bounce == ("r", 0)
    assert plan.pending is None


def test_the_session_decides_up_to_the_first_request_response_lambda() -> None:
    plan = in_session(
        f'      - {{type: lambda, function_arn: "{ASK}", invocation_type: request_response}}\n'
        f"      - {BOUNCE}\n"
    )
    # What the function will answer is not known yet: the bounce after it is not decided now.
    assert plan.data_reply == replies.queued("m1")
    assert plan.session_bounce is None
    assert plan.pending == (0, 0)
    assert plan.rules[0].actions == ()


def test_an_event_lambda_does_not_wait() -> None:
    plan = in_session(f'      - {{type: lambda, function_arn: "{ASK}"}}\n      - {BOUNCE}\n')
    assert plan.pending is None
    assert [step.index for step in plan.rules[0].actions] == [0, 1]
    # A Lambda delivers the message: a bounce after it is a DSN, not a reply to DATA.
    assert plan.session_bounce is None
    assert plan.data_reply == replies.queued("m1")


def test_steps_come_in_order_with_their_recipients() -> None:
    rules = compiled(
        "  - name: a\n    actions:\n      - {type: s3, bucket: mail}\n"
        "      - {type: stop}\n  - name: b\n    actions:\n      - {type: s3, bucket: other}\n"
    )
    evaluation = walk(rules)
    seen: list[tuple[str, int, str, tuple[str, ...]]] = []
    while (step := evaluation.next_step()) is not None:
        seen.append((step.rule.name, step.index, step.action.receipt_type, step.recipients))
        evaluation.send(CONTINUE)
    assert seen == [("a", 0, "S3", ("user@example.com",)), ("a", 1, "Stop", ("user@example.com",))]
    assert evaluation.plan().rules[0].stop == "Stop"


def test_one_outcome_per_step() -> None:
    evaluation = walk(compiled("  - name: a\n    actions:\n      - {type: s3, bucket: mail}\n"))
    with pytest.raises(RuntimeError, match="no step"):
        evaluation.send(Outcome())
    assert evaluation.next_step() is not None
    with pytest.raises(RuntimeError, match="before the next"):
        evaluation.next_step()
