"""The values between evaluation and execution: dispositions and ledger keys."""

from __future__ import annotations

import pytest

from inbound.core.steps import Flow, Outcome, StepKey, parse_disposition


@pytest.mark.parametrize(
    ("answered", "flow"),
    [
        ("STOP_RULE", Flow.STOP_RULE),
        ("STOP_RULE_SET", Flow.STOP_RULE_SET),
        ("CONTINUE", Flow.CONTINUE),
        ("__pause__", Flow.CONTINUE),  # once a sentinel inside the evaluator: now just text
        ("", Flow.CONTINUE),
        ("stop_rule", Flow.CONTINUE),  # SES compares exactly
        (42, Flow.CONTINUE),
        (None, Flow.CONTINUE),
        ({"disposition": "STOP_RULE"}, Flow.CONTINUE),
    ],
)
def test_anything_but_the_two_stops_continues(answered: object, flow: Flow) -> None:
    assert parse_disposition(answered) is flow


def test_an_outcome_keeps_the_disposition_as_answered() -> None:
    assert Outcome.disposition("__pause__") == Outcome(Flow.CONTINUE, "__pause__")
    assert Outcome.disposition(None) == Outcome()


@pytest.mark.parametrize(
    ("key", "text"),
    [
        (StepKey(0, 0), "0:0"),
        (StepKey(12, 3), "12:3"),
        (StepKey(1, 2, "a@example.com"), "1:2:a@example.com"),
    ],
)
def test_keys_read_back(key: StepKey, text: str) -> None:
    assert str(key) == text
    assert StepKey.parse(text) == key


def test_keys_written_before_the_recipient_dimension_read_as_rule_and_action() -> None:
    # spool state.json and the SES handler's S3 state have always used "RULE:ACTION".
    assert StepKey.parse("2:1") == StepKey(2, 1, None)


@pytest.mark.parametrize("text", ["", "0", "a:b", "0:", ":1"])
def test_bad_keys_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="step key"):
        StepKey.parse(text)
