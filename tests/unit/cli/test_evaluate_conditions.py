"""`inbound evaluate` on `re:` subject patterns (SPEC section 4): searched in the decoded
subject, whole-value when anchored, and the trace says what the subject was when one fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from inbound.cli.main import main

HELLO = Path(__file__).resolve().parents[3] / "fixtures" / "messages" / "hello.eml"
SUBJECT = "Hello, I need help with my order"


@pytest.mark.parametrize(
    ("pattern", "applies"),
    [
        ("re:help", True),
        (r"re:need help\b", True),
        ("re:^help", False),
        ("re:^hello, .* order$", True),
        ("help*", False),
        ("*help*", True),
    ],
)
def test_evaluate_subject_pattern(
    pattern: str, applies: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: 1\nname: t\ndomains: [example.com]\nrules:\n"
        f"  - {{name: help, when: {{subject: '{pattern}'}}, actions: [{{type: stop}}]}}\n"
    )
    code = main(["evaluate", "--rules", str(rules), "--eml", str(HELLO), "--rcpt", "a@example.com"])
    out = capsys.readouterr().out
    assert code == 0
    if applies:
        assert "help: applies to a@example.com" in out
    else:
        assert f"help: skipped: when subject does not hold (saw {SUBJECT!r})" in out
