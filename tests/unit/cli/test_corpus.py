"""Every message of the corpus evaluates against the example rules without an exception."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inbound.cli.main import main

ROOT = Path(__file__).resolve().parents[3]
MESSAGES = sorted((ROOT / "fixtures" / "corpus" / "eml").rglob("*.eml"))


def test_the_corpus_is_there() -> None:
    assert len(MESSAGES) >= 130


@pytest.mark.parametrize("eml", MESSAGES, ids=[p.name for p in MESSAGES])
def test_evaluates(eml: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "evaluate",
            "--rules",
            str(ROOT / "rules" / "example.yaml"),
            "--eml",
            str(eml),
            "--rcpt",
            "support@example.com",
            "--rcpt",
            "billing@example.com",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["outcome"] == "accepted"
    assert out["rules"][0]["name"] == "support"
