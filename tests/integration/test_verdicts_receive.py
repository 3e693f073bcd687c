"""Verdicts in the receiver and in `evaluate --scan`, with the real clamd and spamd: a
`when: {virus: [FAIL]}` bounce rejects EICAR in the session, headers carry the verdicts, and a
scanner that is down or hangs gives PROCESSING_FAILED without holding up the reply."""

from __future__ import annotations

import json
import smtplib
import socket
import time
from pathlib import Path

import pytest

from inbound.cli.main import main
from tests.conftest import CORPUS_EML
from tests.integration.daemons import Daemons
from tests.integration.receiver import in_process, settings_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

RULES = """\
version: 1
name: scanning
domains: [example.com]
rules:
  - name: drop-viruses
    scan_enabled: true
    when: {virus: [FAIL]}
    actions:
      - {type: bounce, smtp_reply_code: "550", status_code: "5.7.1", message: "Virus found", sender: mailer-daemon@example.com}
      - {type: stop}
  - name: store
    actions:
      - {type: s3, bucket: mail, prefix: in/}
"""
EICAR = CORPUS_EML / "spam-virus" / "constructed__eicar_attachment_base64.eml"
GTUBE = CORPUS_EML / "spam-virus" / "constructed__gtube_plain.eml"
CLEAN = CORPUS_EML / "real" / "mikel__basic_email.eml"


def send(port: int, eml: Path) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("sender@sender.example")
        client.rcpt("support@example.com")
        return client.data(eml.read_bytes())


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_virus_is_rejected_in_the_session(tmp_path: Path, daemons: Daemons) -> None:
    settings = settings_for(tmp_path, RULES, clamd=daemons.clamd, spamd=daemons.spamd)
    with in_process(settings) as running:
        assert send(running.port, EICAR) == (550, b"5.7.1 Virus found")
        code, _ = send(running.port, CLEAN)
        assert code == 250
        [stored] = running.wait_stored(1).values()
        running.wait_idle()
    assert b"X-SES-Virus-Verdict: PASS\r\n" in stored
    assert b"X-SES-Spam-Verdict: PASS\r\n" in stored
    assert b"Received-SPF: none" in stored  # no SPF record for sender.example in the zone


def test_gtube_gets_spam_fail_in_the_stored_headers(tmp_path: Path, daemons: Daemons) -> None:
    settings = settings_for(tmp_path, RULES, clamd=daemons.clamd, spamd=daemons.spamd)
    with in_process(settings) as running:
        assert send(running.port, GTUBE)[0] == 250
        [stored] = running.wait_stored(1).values()
    assert b"X-SES-Spam-Verdict: FAIL\r\n" in stored
    assert b"X-SES-Virus-Verdict: PASS\r\n" in stored


def test_scanners_down_give_processing_failed_and_the_message_is_kept(tmp_path: Path) -> None:
    nowhere = f"127.0.0.1:{unused_port()}"
    settings = settings_for(tmp_path, RULES, clamd=nowhere, spamd=nowhere)
    with in_process(settings) as running:
        started = time.monotonic()
        assert send(running.port, EICAR)[0] == 250  # nobody could tell it is a virus
        assert time.monotonic() - started < 5
        [stored] = running.wait_stored(1).values()
        running.wait_idle()
    assert b"X-SES-Virus-Verdict: PROCESSING_FAILED\r\n" in stored
    assert b"X-SES-Spam-Verdict: PROCESSING_FAILED\r\n" in stored


def test_a_hanging_scanner_does_not_hold_the_reply_past_its_timeout(tmp_path: Path) -> None:
    with socket.socket() as hanging:
        hanging.bind(("127.0.0.1", 0))
        hanging.listen(8)  # accepts connections (the kernel does) and never answers
        address = f"127.0.0.1:{hanging.getsockname()[1]}"
        settings = settings_for(tmp_path, RULES, clamd=address, scan_timeout=1.0)
        with in_process(settings) as running:
            started = time.monotonic()
            code, _ = send(running.port, CLEAN)
            elapsed = time.monotonic() - started
            assert code == 250
            assert 1.0 <= elapsed < 3.0
            [stored] = running.wait_stored(1).values()
    assert b"X-SES-Virus-Verdict: PROCESSING_FAILED\r\n" in stored


def test_evaluate_scan_measures_the_fixture(
    daemons: Daemons, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    zone = tmp_path / "empty.zone"
    zone.write_text("")
    code = main(
        [
            "evaluate",
            "--rules",
            str(rules),
            "--eml",
            str(EICAR),
            "--rcpt",
            "a@example.com",
            "--scan",
            "--clamd",
            daemons.clamd,
            "--spamd",
            daemons.spamd,
            "--dns-zone",
            str(zone),
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdicts"]["virus"] == "FAIL"
    assert out["verdicts"]["spam"] in ("PASS", "GRAY")
    assert out["verdicts"]["spf"] == "GRAY"
    assert out["data_reply"] == {"code": 550, "status": "5.7.1", "text": "Virus found"}


def test_a_rule_test_case_can_ask_for_a_scan(
    daemons: Daemons, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    (tmp_path / "empty.zone").write_text("")
    (tmp_path / "scan.test.yaml").write_text(
        "rules: rules.yaml\n"
        "cases:\n"
        f"  - {{name: eicar is bounced, eml: {EICAR}, rcpt: [a@example.com], scan: true,\n"
        "     expect: {outcome: rejected, rules: [drop-viruses]}}\n"
        f"  - {{name: clean mail is stored, eml: {CLEAN}, rcpt: [a@example.com], scan: true,\n"
        "     expect: {outcome: accepted, rules: [store]}}\n"
    )
    code = main(
        [
            "test",
            str(tmp_path / "scan.test.yaml"),
            "--clamd",
            daemons.clamd,
            "--spamd",
            daemons.spamd,
            "--dns-zone",
            str(tmp_path / "empty.zone"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.splitlines()[-1] == "2 passed, 0 failed"


def test_dns_timing_out_gives_processing_failed_within_the_dns_timeout(tmp_path: Path) -> None:
    zone = tmp_path / "slow.zone"
    zone.write_text("slow.example  TIMEOUT\n_dmarc.slow.example  TIMEOUT\n")
    settings = settings_for(tmp_path, RULES, dns_zones=(zone,), dns_timeout=0.5)
    message = b"From: someone@slow.example\r\nSubject: slow DNS\r\n\r\nhello\r\n"
    with in_process(settings) as running, smtplib.SMTP("127.0.0.1", running.port) as client:
        client.ehlo("client.test")
        client.mail("someone@slow.example")
        client.rcpt("support@example.com")
        started = time.monotonic()
        code, _ = client.data(message)
        elapsed = time.monotonic() - started
        assert code == 250
        # authentication shares one deadline of twice the DNS timeout
        assert elapsed < 2.0
        [stored] = running.wait_stored(1).values()
        running.wait_idle()
    assert b"Received-SPF: temperror" in stored
    assert b"dmarc=temperror" in stored
