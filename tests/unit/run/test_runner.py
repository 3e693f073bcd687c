"""`run_message` with the in-memory services and ledger: order, records, replay, failures."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from inbound.core.envelope import Connection, Envelope
from inbound.core.errors import TransientActionError
from inbound.core.message import MessageFacts
from inbound.core.steps import Flow, Outcome, StepKey, StepRecord
from inbound.core.verdicts import Verdicts
from inbound.message import notification
from inbound.message import parse as message_parse
from inbound.rules.evaluate import evaluate, results_by_function
from inbound.run.ledgers import MemoryLedger, SpoolLedger
from inbound.run.runner import RunResult, run_message
from inbound.spool.store import Spool
from inbound.targets.memory import MemoryServices
from tests.unit.run.helpers import FUNCTION, RAW, compiled, subject, walk
from tests.unit.spool.test_store import spool_one

ASK = FUNCTION.format(name="ask")
RULES = f"""\
  - name: first
    actions:
      - {{type: s3, bucket: mail, prefix: a/}}
      - {{type: lambda, function_arn: "{ASK}", invocation_type: request_response}}
      - {{type: add_header, name: X-Seen, value: "yes"}}
      - {{type: s3, bucket: mail, prefix: b/}}
  - name: second
    actions:
      - {{type: s3, bucket: mail, prefix: c/}}
"""


def run(rules: str, fakes: MemoryServices, ledger: MemoryLedger | SpoolLedger) -> RunResult:
    return asyncio.run(run_message(walk(compiled(rules)), subject(), fakes.services, ledger))


def stored(fakes: MemoryServices) -> list[str]:
    return sorted(key for _bucket, key in fakes.blobs.objects)


@pytest.mark.parametrize("answer", ["__pause__", "", 42, None, "CONTINUE"])
def test_any_other_answer_continues_through_both_rules(answer: object) -> None:
    fakes = MemoryServices(answers={"ask": {"disposition": answer}})
    result = run(RULES, fakes, MemoryLedger())
    assert result.failed is None
    assert stored(fakes) == ["a/m1", "b/m1", "c/m1"]
    assert [name for name, _event, _wait in fakes.functions.invoked] == ["ask"]


@pytest.mark.parametrize(
    ("answer", "objects"),
    [("STOP_RULE", ["a/m1", "c/m1"]), ("STOP_RULE_SET", ["a/m1"])],
)
def test_the_two_stops_stop(answer: str, objects: list[str]) -> None:
    fakes = MemoryServices(answers={"ask": {"disposition": answer}})
    result = run(RULES, fakes, MemoryLedger())
    assert stored(fakes) == objects
    assert result.plan.rules[0].stop == answer


def test_add_header_reaches_the_later_actions_and_is_not_recorded() -> None:
    fakes = MemoryServices()
    ledger = MemoryLedger()
    run(RULES, fakes, ledger)
    assert fakes.blobs.objects[("mail", "a/m1")] == RAW
    assert fakes.blobs.objects[("mail", "b/m1")].startswith(b"X-Seen: yes\r\n")
    assert fakes.blobs.objects[("mail", "c/m1")].startswith(b"X-Seen: yes\r\n")
    assert sorted(map(str, ledger.records)) == ["0:0", "0:1", "0:3", "1:0"]
    assert ledger.records[StepKey(0, 1)] == StepRecord("succeeded", 1, None, "CONTINUE")


def test_the_ledger_is_flushed_before_every_action() -> None:
    ledger = MemoryLedger()
    run(RULES, MemoryServices(), ledger)
    assert ledger.flushes == 4  # s3, lambda, s3, s3: add_header runs no service


def test_a_failure_stops_the_run_and_the_next_run_resumes_after_what_succeeded() -> None:
    fakes = MemoryServices()
    fakes.functions.failing = TransientActionError("function ask failed")
    ledger = MemoryLedger()
    first = run(RULES, fakes, ledger)
    assert isinstance(first.failed, TransientActionError)
    assert first.failed_step is not None
    assert first.failed_step.key == StepKey(0, 1)
    assert stored(fakes) == ["a/m1"]
    assert ledger.records[StepKey(0, 1)] == StepRecord("failed", 1, "function ask failed")

    fakes.functions.failing = None
    fakes.blobs.objects.clear()
    second = run(RULES, fakes, ledger)
    assert second.failed is None
    assert stored(fakes) == ["b/m1", "c/m1"]  # a/ is not stored again
    assert ledger.records[StepKey(0, 1)].attempts == 2


def test_the_plan_of_a_run_is_the_plan_evaluate_prints() -> None:
    rules = compiled(RULES)
    fakes = MemoryServices(answers={"ask": {"disposition": "STOP_RULE"}})
    ran = asyncio.run(run_message(walk(rules), subject(), fakes.services, MemoryLedger())).plan
    assumed = evaluate(
        rules,
        message_id="m1",
        connection=Connection.of("192.0.2.1", "client.test"),
        envelope=Envelope("a@sender.test", ("user@example.com",)),
        message=MessageFacts(size=len(RAW)),
        verdicts=Verdicts(),
        lambda_results=results_by_function({"ask": "STOP_RULE"}),
    )
    assert ran == assumed


# State written by the version before the runner (spool state.json as `DispatchState.to_json`
# wrote it): rule 0's S3 action and its Lambda succeeded, the Lambda answering STOP_RULE.
OLD_STATE = {
    "steps": {
        "0:0": {"outcome": "succeeded", "attempts": 1, "last_error": None, "result": None},
        "0:1": {"outcome": "succeeded", "attempts": 2, "last_error": None, "result": "STOP_RULE"},
    },
    "attempts": 1,
    "next_attempt_at": "2026-01-02T03:05:05+00:00",
    "last_error": "SlowDown: please reduce your request rate",
    "dead_reason": None,
    "retried_at": None,
}


def test_spool_state_of_the_old_version_repeats_no_succeeded_action(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    message_id = spool_one(spool)
    (spool.message_path(message_id) / "state.json").write_text(json.dumps(OLD_STATE))
    restarted = Spool(tmp_path)  # a restart after the upgrade
    ledger = SpoolLedger(restarted, message_id, restarted.state(message_id))
    fakes = MemoryServices(answers={"ask": {"disposition": "CONTINUE"}})
    result = asyncio.run(
        run_message(walk(compiled(RULES), message_id), subject(message_id), fakes.services, ledger)
    )
    assert result.failed is None
    assert fakes.functions.invoked == []  # replayed, with its recorded STOP_RULE ...
    assert stored(fakes) == [f"c/{message_id}"]  # ... so only the second rule runs
    assert result.plan.rules[0].stop == "STOP_RULE"


def test_replayed_outcomes_parse_the_recorded_disposition() -> None:
    rules = compiled(RULES)
    action = rules.rules[0].actions[1]
    assert action.replay("STOP_RULE_SET") == Outcome(Flow.STOP_RULE_SET, "STOP_RULE_SET")
    assert action.replay("__pause__") == Outcome(Flow.CONTINUE, "__pause__")
    assert rules.rules[0].actions[0].replay(None) == Outcome()


TOPIC = "arn:aws:sns:us-east-1:123456789012:t"
NOTIFYING = f"""\
  - name: notify
    actions:
      - {{type: s3, bucket: mail, prefix: a/, topic_arn: "{TOPIC}"}}
      - {{type: lambda, function_arn: "{FUNCTION.format(name="meddle")}", invocation_type: event}}
      - {{type: sns, topic_arn: "{TOPIC}"}}
      - {{type: add_header, name: X-Seen, value: "yes"}}
      - {{type: sns, topic_arn: "{TOPIC}"}}
"""


def test_notifying_actions_parse_each_content_once_and_get_their_own_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parsed: list[bytes] = []
    real = message_parse.parse_headers

    def parse_headers(raw: bytes) -> MessageFacts:
        parsed.append(raw)
        return real(raw)

    monkeypatch.setattr(notification, "parse_headers", parse_headers)

    def meddle(event: dict[str, object]) -> None:
        event["Records"][0]["ses"]["mail"]["headers"].clear()  # type: ignore[index]

    fakes = MemoryServices(functions={"meddle": meddle})
    result = run(NOTIFYING, fakes, MemoryLedger())
    assert result.failed is None
    # Four notifications (s3's topic, the Lambda event, two SNS): the header block of the
    # message as received, then of the message with X-Seen, each parsed once.
    assert parsed == [RAW, b"X-Seen: yes\r\n" + RAW]
    mails = [notification["mail"] for _, notification in fakes.topics.published]
    assert [m["headers"][0]["name"] for m in mails] == ["From", "From", "X-Seen"]  # type: ignore[index]
