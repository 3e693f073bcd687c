"""The condition table: every row has every facet, the table and the `Conditions` model agree,
and the key sets the rest of the code uses are views of it."""

from __future__ import annotations

import typing

import pytest

from inbound.core.message import Reads
from inbound.message.read import need_for
from inbound.rules.compiled import CompiledRuleSet
from inbound.rules.condition_table import (
    CONDITIONS,
    ConditionRow,
    ConditionTableError,
    EventPart,
    Guarded,
    LocalOnly,
)
from inbound.rules.conditions import verdict
from inbound.rules.evaluate import message_keys
from inbound.rules.model import Conditions, Rule, RuleSet
from inbound.ses.export import GUARD_KEYS, LOCAL_ONLY_KEYS
from inbound.ses.handler import CONNECTION_KEYS


@pytest.mark.parametrize("row", CONDITIONS.rows, ids=CONDITIONS.keys)
def test_every_row_has_every_facet(row: ConditionRow[object]) -> None:
    assert isinstance(row.key, str)
    assert row.key
    assert callable(row.compile)
    assert isinstance(row.reads, Reads)
    match row.ses:
        case Guarded(part, where):
            assert isinstance(part, EventPart)
            assert where
        case LocalOnly(reason):
            assert reason
        case other:
            pytest.fail(f"{row.key}: no SES facet: {other!r}")


def test_the_table_keys_are_the_models_when_and_unless_fields_in_order() -> None:
    fields = [info.alias or name for name, info in Conditions.model_fields.items()]
    assert list(CONDITIONS.keys) == fields
    # `when` and `unless` are both that model, so the table covers both.
    for name in ("when", "unless"):
        annotation = Rule.model_fields[name].annotation
        assert Conditions in typing.get_args(annotation)


def test_a_row_without_a_facet_is_refused() -> None:
    with pytest.raises(ConditionTableError, match=r"'x': no ses\.reason"):
        ConditionRow("x", verdict, Reads.VERDICTS, LocalOnly(""))
    with pytest.raises(ConditionTableError, match=r"'': no key"):
        ConditionRow("", verdict, Reads.VERDICTS, Guarded(EventPart.RECEIPT, "receipt"))
    with pytest.raises(ConditionTableError, match="'spam': two rows"):
        CONDITIONS.extended(CONDITIONS.row("spam"))


def test_a_model_field_without_a_row_is_an_error_not_ignored() -> None:
    class MoreConditions(Conditions):
        reply_to: list[str] | None = None

    with pytest.raises(ConditionTableError, match="'reply_to' has no row"):
        CONDITIONS.compile(MoreConditions(reply_to=["a@example.com"]))


def test_the_key_sets_are_views_of_the_table() -> None:
    assert set(CONNECTION_KEYS) == {"client_ip", "tls"}
    assert set(LOCAL_ONLY_KEYS) == {"size", "attachment", "tls"}
    assert set(GUARD_KEYS) == set(CONDITIONS.keys) - set(LOCAL_ONLY_KEYS)
    assert GUARD_KEYS["spam"] == "receipt.spamVerdict"
    assert CONDITIONS.guard_parts(["from", "subject", "spf"]) == {
        EventPart.HEADERS_OR_COMMON,
        EventPart.RECEIPT,
    }
    assert CONDITIONS.guard_parts(["size", "tls"]) == frozenset()


NEEDS = {
    "no_conditions": ({}, "nothing"),
    "envelope_and_verdicts": ({"sender": "a@example.org", "spf": "FAIL"}, "nothing"),
    "size_is_known_without_reading": ({"size": {"max": 10}}, "nothing"),
    "connection": ({"client_ip": "10.0.0.0/8", "tls": True}, "nothing"),
    "from": ({"from": "example.org"}, "headers"),
    "subject": ({"subject": "*x*"}, "headers"),
    "header": ({"header": {"X-A": "b"}}, "headers"),
    "attachment": ({"attachment": {"filename": "*.pdf"}}, "everything"),
    "attachment_wins": ({"subject": "x", "attachment": {"filename": "*.pdf"}}, "everything"),
}


@pytest.mark.parametrize(("when", "need"), NEEDS.values(), ids=NEEDS)
def test_what_is_read_from_the_message_follows_the_reads_facet(
    when: dict[str, object], need: str
) -> None:
    rule_set = RuleSet.model_validate(
        {
            "name": "t",
            "domains": ["example.com", "example.net"],
            "rules": [{"name": "r", "recipients": ["example.com"], "unless": when}],
        }
    )
    rules = CompiledRuleSet.build(rule_set)
    assert need_for(message_keys(rules, ["a@example.com"])) == need
    # no rule for this recipient: nothing to read
    assert need_for(message_keys(rules, ["a@example.net"])) == "nothing"
