"""Every message of the corpus evaluates against the example rules without an exception, and
is refused exactly when `inbound serve` refuses the same bytes (tests/integration/
test_corpus_receive.py sends them; files with a bare CR are sent there through smtplib's
line-ending fix, which evaluate does not make: it refuses them as serve refuses them raw)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inbound.cli.main import main

ROOT = Path(__file__).resolve().parents[3]
MESSAGES = sorted((ROOT / "fixtures" / "corpus" / "eml").rglob("*.eml"))
# A line over 1000 octets (CRLF included): 500 5.5.2, as test_corpus_receive.TOO_LONG.
TOO_LONG = {
    "mime4j__very_long_boundary.eml",
    "mime4j__very_long_lines.eml",
    "rspamd__dkim_huge_h_list_15k_line.eml",
    "sisimai__ses_sns_bounce_notification_email.eml",
    # Lines ended by CR alone: no LF at all, so the whole file is one line over 1000 octets.
    "sisimai__cr_only_line_endings.eml",
}
# A CR that does not end a line with LF: 550 5.5.2, the smuggling defence.
BARE_CR = {
    "rspamd__bare_cr.eml",
    "sisimai__bare_cr_bounce.eml",
}


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
    refused = {**dict.fromkeys(TOO_LONG, (500, "5.5.2")), **dict.fromkeys(BARE_CR, (550, "5.5.2"))}
    if eml.name in refused:
        assert out["outcome"] == "rejected"
        assert (out["data_reply"]["code"], out["data_reply"]["status"]) == refused[eml.name]
        assert out["rules"] == []
    else:
        assert out["outcome"] == "accepted"
        assert out["rules"][0]["name"] == "support"
