"""The command line as a user meets it: outputs, exit codes, and no traceback on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inbound.cli.main import main

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = "rules/example.yaml"
HELLO = "fixtures/messages/hello.eml"


def inbound(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run the real `inbound` entry point in a child process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "inbound", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.fixture(autouse=True)
def _at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def test_evaluate_json_has_the_spec_keys_then_skipped(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "evaluate",
            "--rules",
            EXAMPLE,
            "--eml",
            HELLO,
            "--rcpt",
            "support@example.com",
            "--rcpt",
            "x@elsewhere.example",
            "--client-ip",
            "203.0.113.5",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == [
        "message_id",
        "connection",
        "recipients",
        "data_reply",
        "verdicts",
        "dmarc_policy",
        "rules",
        "outcome",
        "skipped",
    ]
    assert len(out["message_id"]) == 40
    assert out["connection"] == {
        "client_ip": "203.0.113.5",
        "accepted": True,
        "filter": None,
        "reply": None,
    }
    assert out["recipients"] == [
        {
            "address": "support@example.com",
            "accepted": True,
            "reply": {"code": 250, "status": "2.1.5", "text": "Ok"},
        },
        {
            "address": "x@elsewhere.example",
            "accepted": False,
            "reply": {
                "code": 550,
                "status": "5.7.1",
                "text": "Recipient address rejected: relay access denied",
            },
        },
    ]
    assert out["data_reply"] == {
        "code": 250,
        "status": "2.0.0",
        "text": f"Ok: queued as {out['message_id']}",
    }
    assert out["verdicts"] == {
        "spam": "GRAY",
        "virus": "GRAY",
        "spf": "GRAY",
        "dkim": "GRAY",
        "dmarc": "GRAY",
    }  # scanning is on for support: spam/virus GRAY
    assert out["dmarc_policy"] is None
    [support] = out["rules"]
    assert support["name"] == "support"
    assert support["recipients"] == ["support@example.com"]
    assert support["stop"] == "Stop"
    assert [a["type"] for a in support["actions"]] == ["AddHeader", "S3", "Lambda", "SNS", "Stop"]
    assert support["actions"][1] == {
        "type": "S3",
        "bucketName": "mail",
        "objectKeyPrefix": "support/",
        "objectKey": f"support/{out['message_id']}",
    }
    assert support["actions"][2] == {
        "type": "Lambda",
        "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:triage",
        "invocationType": "RequestResponse",
    }
    assert out["outcome"] == "accepted"
    assert out["skipped"] == [
        {"name": "drop-viruses", "reason": "when virus does not hold (saw virus=GRAY)"},
        {"name": "forward-team", "reason": "no accepted recipient matches"},
        {"name": "invoices", "reason": "not evaluated: evaluation stopped"},
        {"name": "catch-all", "reason": "not evaluated: evaluation stopped"},
        {"name": "old-archive", "reason": "disabled"},
    ]


def test_evaluate_filter_refusal_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    main(
        [
            "evaluate",
            "--rules",
            EXAMPLE,
            "--eml",
            HELLO,
            "--rcpt",
            "a@example.com",
            "--client-ip",
            "192.0.2.7",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert out["connection"] == {
        "client_ip": "192.0.2.7",
        "accepted": False,
        "filter": "spammy-network",
        "reply": {"code": 554, "status": "5.7.1", "text": "Access denied"},
    }
    assert out["recipients"] == []
    assert out["data_reply"] is None
    assert out["outcome"] == "rejected"


def test_evaluate_virus_bounce_and_verdict_flags(capsys: pytest.CaptureFixture[str]) -> None:
    main(
        [
            "evaluate",
            "--rules",
            EXAMPLE,
            "--eml",
            HELLO,
            "--rcpt",
            "support@example.com",
            "--verdict",
            "virus=FAIL",
            "--verdict",
            "dmarc=FAIL",
            "--verdict",
            "dmarc_policy=reject",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert out["data_reply"] == {
        "code": 550,
        "status": "5.7.1",
        "text": "Message rejected: it contains a virus",
    }
    assert out["verdicts"]["virus"] == "FAIL"
    assert out["dmarc_policy"] == "reject"
    assert out["outcome"] == "rejected"
    assert [r["name"] for r in out["rules"]] == ["drop-viruses"]
    assert out["rules"][0]["stop"] == "Stop"


def test_evaluate_trace_says_why_rules_did_not_apply(capsys: pytest.CaptureFixture[str]) -> None:
    main(
        [
            "evaluate",
            "--rules",
            EXAMPLE,
            "--eml",
            HELLO,
            "--rcpt",
            "info@example.com",
            "--mail-from",
            "MAILER-DAEMON@relay.example",
        ]
    )
    out = capsys.readouterr().out
    assert "drop-viruses: skipped: when virus does not hold (saw virus=GRAY)" in out
    assert "support: skipped: no accepted recipient matches" in out
    assert "catch-all: skipped: unless sender holds (saw MAILER-DAEMON@relay.example)" in out
    assert "old-archive: skipped: disabled" in out
    assert "note: no rule applied" in out
    assert "outcome: accepted" in out


def test_evaluate_ses_json_rule_set_with_domain_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "described.json"
    rules.write_text(
        json.dumps(
            {
                "Metadata": {"Name": "live", "CreatedTimestamp": "2024-01-01T00:00:00Z"},
                "Rules": [
                    {
                        "Name": "off",
                        "Recipients": ["a@example.com"],
                        "Actions": [{"StopAction": {"Scope": "RuleSet"}}],
                    },
                    {
                        "Name": "store",
                        "Enabled": True,
                        "TlsPolicy": "Optional",
                        "ScanEnabled": True,
                        "Recipients": [],
                        "Actions": [
                            {"S3Action": {"BucketName": "mail", "ObjectKeyPrefix": "in"}},
                            {
                                "SNSAction": {
                                    "TopicArn": "arn:aws:sns:us-east-1:123456789012:t",
                                    "Encoding": "Base64",
                                }
                            },
                        ],
                    },
                ],
            }
        )
    )
    code = main(
        [
            "evaluate",
            "--rules",
            str(rules),
            "--eml",
            HELLO,
            "--rcpt",
            "a@example.com",
            "--domain",
            "example.com",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    # SES's API default is Enabled=false: the first rule does not run.
    assert [r["name"] for r in out["rules"]] == ["store"]
    assert out["rules"][0]["actions"][1] == {
        "type": "SNS",
        "topicArn": "arn:aws:sns:us-east-1:123456789012:t",
        "encoding": "BASE64",
    }


def test_test_command_on_the_example() -> None:
    result = inbound("test", "fixtures/example.test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "fixtures/example.test.yaml"
    assert "  PASS  a virus is bounced in the session" in lines
    assert lines[-1] == "11 passed, 0 failed"


def test_test_command_reports_what_failed(tmp_path: Path) -> None:
    (tmp_path / "x.test.yaml").write_text(
        f"rules: {ROOT / EXAMPLE}\n"
        "cases:\n"
        "  - name: wrong expectations\n"
        f"    eml: {ROOT / HELLO}\n"
        "    rcpt: [support@example.com, nobody@example.net]\n"
        "    expect:\n"
        "      outcome: rejected\n"
        "      rules: [catch-all]\n"
        "      actions: [S3]\n"
        "      recipients: {nobody@example.net: 250}\n"
        "  - name: right expectations\n"
        f"    eml: {ROOT / HELLO}\n"
        "    rcpt: support@example.com\n"
        "    expect: {outcome: accepted, data_reply: 250 2.0.0, not_rules: [catch-all]}\n"
    )
    result = inbound("test", str(tmp_path))
    assert result.returncode == 1
    where = f"{tmp_path}/x.test.yaml"
    assert result.stdout.splitlines()[1:] == [
        "  FAIL  wrong expectations",
        f"{where}:7: wrong expectations: outcome: expected rejected, saw accepted",
        f"{where}:8: wrong expectations: rules: expected [catch-all], saw [support]",
        f"{where}:9: wrong expectations: actions: expected [S3], "
        "saw [AddHeader, S3, Lambda, SNS, Stop]",
        f"{where}:10: wrong expectations: recipients: nobody@example.net expected 250, "
        "saw 550 5.7.1 Recipient address rejected: relay access denied",
        "  PASS  right expectations",
        "1 passed, 1 failed",
    ]


BAD_INPUT = {
    "missing_rules_file": (["check", "nope.yaml"], "inbound check: nope.yaml: no such file"),
    "rules_is_a_directory": (["check", "rules"], "inbound check: rules: is a directory"),
    "missing_eml": (
        ["evaluate", "--rules", EXAMPLE, "--eml", "nope.eml", "--rcpt", "a@example.com"],
        "inbound evaluate: ",
    ),
    "bad_verdict": (
        [
            "evaluate",
            "--rules",
            EXAMPLE,
            "--eml",
            HELLO,
            "--rcpt",
            "a@example.com",
            "--verdict",
            "virus=MAYBE",
        ],
        "--verdict: virus:",
    ),
    "unknown_verdict_kind": (
        [
            "evaluate",
            "--rules",
            EXAMPLE,
            "--eml",
            HELLO,
            "--rcpt",
            "a@example.com",
            "--verdict",
            "ham=PASS",
        ],
        "--verdict: ham:",
    ),
    "verdict_without_equals": (
        [
            "evaluate",
            "--rules",
            EXAMPLE,
            "--eml",
            HELLO,
            "--rcpt",
            "a@example.com",
            "--verdict",
            "virus",
        ],
        "expected NAME=VALUE",
    ),
    "bad_client_ip": (
        [
            "evaluate",
            "--rules",
            EXAMPLE,
            "--eml",
            HELLO,
            "--rcpt",
            "a@example.com",
            "--client-ip",
            "300.1.1.1",
        ],
        "--client-ip '300.1.1.1': not an IP address",
    ),
    "missing_rcpt_flag": (["evaluate", "--rules", EXAMPLE, "--eml", HELLO], "--rcpt"),
    "unknown_flag": (["check", EXAMPLE, "--frobnicate"], "unrecognized arguments: --frobnicate"),
    "unknown_command": (["frobnicate"], "invalid choice: 'frobnicate'"),
    "invalid_rules": (
        [
            "evaluate",
            "--rules",
            "tests/golden/errors/unknown_keys.yaml",
            "--eml",
            HELLO,
            "--rcpt",
            "a@example.com",
        ],
        "tests/golden/errors/unknown_keys.yaml:3:1: domain: unknown key 'domain'",
    ),
    "no_test_files": (["test", "inbound"], "no test files"),
    "test_file_with_missing_eml": (
        ["test", "tests/unit/cli/missing-eml.yaml"],
        "tests/unit/cli/missing-eml.yaml:5:10: cases[0].eml: ",
    ),
    "binary_rules_file": (["check", "fixtures/corpus/eml/malformed/spamscope__nul_bytes.eml"], ""),
}


@pytest.mark.parametrize(("args", "message"), BAD_INPUT.values(), ids=BAD_INPUT)
def test_bad_input_exits_2_with_a_message(args: list[str], message: str) -> None:
    result = inbound(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip()


def test_check_ok_prints_a_summary() -> None:
    result = inbound("check", EXAMPLE)
    assert result.returncode == 0
    assert result.stdout.startswith("rules/example.yaml: ok: rule set 'example', 6 rules")


def test_check_domain_naming_one_of_the_files_is_one_domain(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nname: t\ndomains: [example.com]\nrules: []\n")
    result = inbound("check", str(rules), "--domain", "EXAMPLE.com", "--domain", "example.org")
    assert result.returncode == 0, result.stderr
    assert "domains example.com, example.org\n" in result.stdout
    assert result.stderr == ""  # no warning: naming a domain again on the command line is fine


SES_RULES = """\
version: 1
name: main
domains: [example.com]
rules:
  - name: support
    recipients: [support@example.com]
    actions: [{type: s3, bucket: mail, prefix: support/}]
"""

PIPED = {
    "evaluate": ["evaluate", "--rules", EXAMPLE, "--eml", HELLO, "--rcpt", "support@example.com"],
    "test": ["test", "fixtures/"],
    "check_ses": ["check", EXAMPLE, "--ses"],
    "spool_list": ["spool", "--data-dir", "{tmp}/data", "list"],
    "ses_export": ["ses", "export", "{tmp}/rules.yaml"],
}


@pytest.mark.parametrize("args", PIPED.values(), ids=PIPED)
def test_a_reader_that_closes_early_gets_no_traceback(args: list[str], tmp_path: Path) -> None:
    """`inbound ... | head -1`: the command stops quietly (exit 1, as the Python docs advise)."""
    (tmp_path / "rules.yaml").write_text(SES_RULES)
    (tmp_path / "data" / "spool").mkdir(parents=True)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line: every write meets EPIPE
    try:
        result = subprocess.run(
            [sys.executable, "-m", "inbound", *(a.format(tmp=tmp_path) for a in args)],
            cwd=ROOT,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=False,
        )
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == 1


def test_spool_takes_data_dir_before_or_after_the_subcommand(tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir()
    for args in (["--data-dir", str(tmp_path), "list"], ["list", "--data-dir", str(tmp_path)]):
        result = inbound("spool", *args)
        assert (result.returncode, result.stdout) == (0, "0 queued, 0 dead\n"), result.stderr


def test_spool_of_a_directory_without_a_spool_says_so_and_creates_nothing(tmp_path: Path) -> None:
    typo = tmp_path / "inbound-dta"
    result = inbound("spool", "list", "--data-dir", str(typo))
    assert result.returncode == 2
    assert result.stderr == (
        f"inbound spool: {typo}: no spool here (give the receiver's --data-dir; "
        "it makes the spool when it first starts)\n"
    )
    assert not typo.exists()
