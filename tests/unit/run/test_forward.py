"""The forward action: its YAML model, its plan, and its run with the in-memory services."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import default
from pathlib import Path

import pytest

from inbound.actions.forward import ForwardAction
from inbound.actions.forward_plan import choose_mode, expand_destinations
from inbound.cli.main import main
from inbound.core.envelope import Connection, Envelope
from inbound.core.errors import ConfigError, TransientActionError
from inbound.core.message import MessageFacts
from inbound.core.services import OutboundMail
from inbound.core.steps import StepKey
from inbound.core.verdicts import DmarcPolicy, Verdict, Verdicts
from inbound.rules.evaluate import Evaluation
from inbound.rules.load import parse_rule_set
from inbound.run.context import RunSubject
from inbound.run.ledgers import MemoryLedger
from inbound.run.runner import RunResult, run_message
from inbound.srs import SrsKeys, srs_reverse
from inbound.targets.memory import MemoryServices
from tests.unit.run.helpers import RECEIVED, compiled

RAW = (
    b"DKIM-Signature: v=1; a=rsa-sha256; d=sender.test; s=s1; b=AAAA\r\n"
    b"From: Alice <alice@sender.test>\r\nTo: team@example.com\r\nSubject: hi\r\n\r\nbody\r\n"
)
SECRETS = {"INBOUND_SRS_SECRETS": "new-secret,old-secret"}


def rules(action: str, recipients: str = "['re:(?P<who>[a-z]+)@example\\.com']") -> str:
    return f"  - name: fwd\n    recipients: {recipients}\n    actions:\n      - {action}\n"


def run(
    rule_text: str,
    fakes: MemoryServices,
    ledger: MemoryLedger,
    *,
    rcpts: tuple[str, ...] = ("team@example.com",),
    raw: bytes = RAW,
    mail_from: str = "alice@sender.test",
    verdicts: Verdicts | None = None,
) -> RunResult:
    walk = Evaluation(
        compiled(rule_text),
        message_id="m1",
        connection=Connection.of("192.0.2.1", "client.test"),
        envelope=Envelope(mail_from, rcpts),
        message=MessageFacts(size=len(raw)),
        verdicts=verdicts or Verdicts(),
    )
    subject = RunSubject(
        message_id="m1",
        mail_from=mail_from,
        base=raw,
        received_at=RECEIVED,
        processing_ms=lambda: 5,
        hostname="fwd.test",
    )
    return asyncio.run(run_message(walk, subject, fakes.services, ledger))


@pytest.fixture(autouse=True)
def srs_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)


# --- the model -------------------------------------------------------------------------------


def load_error(text: str) -> str:
    with pytest.raises(ConfigError) as raised:
        compiled(text)
    return str(raised.value)


@pytest.mark.parametrize(
    ("action", "recipients", "said"),
    [
        ("{type: forward, to: x@y.test}", "[example.com]", "from_address is required with "),
        (
            "{type: forward, to: x@y.test, from_address: f@example.com}",
            "[example.com]",
            "srs_domain is required with via: relay and from_mode: when_dmarc",
        ),
        (
            "{type: forward, to: '\\1@y.test', from_mode: rewrite, from_address: f@example.com}",
            "[team@example.com]",
            "rules.yaml:8:29: rules[0].actions[0].to[0]: \\1 needs the rule's recipients to be re:",
        ),
        (
            "{type: forward, to: ['a@y.test', '\\g<nobody>@y.test'], via: ses, from_address: f@x.test}",
            "['re:(?P<who>.+)@example\\.com']",
            "rules[0].actions[0].to[1]: 're:(?P<who>.+)@example\\\\.com' has no group \\g<nobody>",
        ),
        ("{type: forward, to: 'not an address', via: ses}", "[example.com]", "not an email"),
        ("{type: forward, to: 'a\\n@y.test', via: ses}", "[example.com]", "a backslash only"),
        ("{type: forward, to: a@y.test, via: smtp}", "[example.com]", "must be 'relay' or 'ses'"),
        (
            "{type: forward, to: a@y.test, from_mode: preserve, srs_domain: f.test, "
            "dkim: {domain: example.com, selector: 's 1', key_file: k}}",
            "[example.com]",
            "is not a DKIM selector",
        ),
    ],
)
def test_mistakes_are_config_errors_with_their_position(
    action: str, recipients: str, said: str
) -> None:
    assert said in load_error(rules(action, recipients))


def test_defaults_follow_the_path() -> None:
    relay = ForwardAction.model_validate(
        {"type": "forward", "to": ["a@b.test"], "from_address": "f@x.test", "srs_domain": "s.test"}
    )
    ses = ForwardAction.model_validate(
        {"type": "forward", "to": "a@b.test", "via": "ses", "from_address": "f@x.test"}
    )
    assert (relay.mode, ses.mode) == ("when_dmarc", "rewrite")
    assert ses.to == ["a@b.test"]
    assert relay.on_oversize == "bounce"


def test_from_address_outside_the_receiving_domains_is_a_warning() -> None:
    text = "version: 1\nname: t\ndomains: [example.com]\nrules:\n" + rules(
        "{type: forward, to: a@b.test, via: ses, from_address: f@elsewhere.test}"
    )
    warnings = [str(w) for w in parse_rule_set(text, "rules.yaml").warnings]
    assert any("'f@elsewhere.test' is not in a receiving domain" in w for w in warnings)


def test_ses_export_refuses_a_forward_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "version: 1\nname: t\ndomains: [example.com]\nrules:\n"
        + rules("{type: forward, to: a@b.test, via: ses, from_address: f@example.com}")
    )
    assert main(["ses", "export", str(path)]) == 2
    assert "action 1 (forward) has no SES equivalent" in capsys.readouterr().err


# --- the plan --------------------------------------------------------------------------------


def test_destinations_take_the_groups_of_the_pattern_that_matched_once_each() -> None:
    found = expand_destinations(
        ["\\1@team.test", "\\g<host>-ops@ops.test", "ops@ops.test"],
        ["Alice@a.example.com", "bob@b.example.com", "alice@a.example.com"],
        ["re:([a-z]+)@(?P<host>[a-z]+)\\.example\\.com"],
    )
    assert [(d.address, d.recipient) for d in found] == [
        ("alice@team.test", "Alice@a.example.com"),
        ("a-ops@ops.test", "Alice@a.example.com"),
        ("ops@ops.test", "Alice@a.example.com"),
        ("bob@team.test", "bob@b.example.com"),
        ("b-ops@ops.test", "bob@b.example.com"),
    ]


@pytest.mark.parametrize(
    ("verdicts", "published", "mode"),
    [
        (Verdicts(dkim=Verdict.PASS, dmarc=Verdict.PASS), DmarcPolicy.REJECT, "preserve"),
        (Verdicts(dkim=Verdict.GRAY, dmarc=Verdict.PASS), DmarcPolicy.REJECT, "rewrite"),
        (Verdicts(dmarc=Verdict.FAIL, dmarc_policy=DmarcPolicy.QUARANTINE), None, "rewrite"),
        (Verdicts(dkim=Verdict.GRAY, dmarc=Verdict.PASS), DmarcPolicy.NONE, "preserve"),
        (Verdicts(dmarc=Verdict.GRAY), None, "preserve"),
        (Verdicts(dmarc=Verdict.PROCESSING_FAILED), None, "rewrite"),
    ],
)
def test_when_dmarc_rewrites_only_what_would_fail_dmarc(
    verdicts: Verdicts, published: DmarcPolicy | None, mode: str
) -> None:
    assert choose_mode("when_dmarc", verdicts, published)[0] == mode
    assert choose_mode("preserve", verdicts, published)[0] == "preserve"
    assert choose_mode("rewrite", verdicts, published)[0] == "rewrite"


# --- the run ---------------------------------------------------------------------------------

PRESERVE = "{type: forward, to: ['\\g<who>@dest.test', ops@dest.test], from_mode: preserve, srs_domain: srs.example.com}"
REWRITE = (
    "{type: forward, to: ['\\1@dest.test'], from_mode: rewrite, from_address: fwd@example.com}"
)


def test_preserve_sends_the_bytes_untouched_under_the_marker_from_an_srs_sender() -> None:
    fakes = MemoryServices()
    ledger = MemoryLedger()
    result = run(rules(PRESERVE), fakes, ledger)
    assert result.failed is None
    sent = fakes.outbound.sent
    assert [m.rcpt_to for m in sent] == [("team@dest.test",), ("ops@dest.test",)]
    for mail in sent:
        assert mail.content == b"X-Inbound-Forwarded: fwd.test\r\n" + RAW
        assert mail.mail_from.upper().startswith("SRS0=")
        assert mail.mail_from.endswith("@srs.example.com")
        keys = SrsKeys.from_env(SECRETS)
        assert keys is not None
        assert srs_reverse(mail.mail_from, keys, datetime.now(UTC)) == "alice@sender.test"
    assert [m.index for m in sent] == [0, 1]
    assert sorted(map(str, ledger.records)) == [
        "0:0",
        "0:0:ops@dest.test",
        "0:0:team@dest.test",
    ]
    assert ledger.records[StepKey(0, 0)].result == (
        "forwarded (preserve: from_mode: preserve) to 2 destinations"
    )


def test_rewrite_sends_from_the_forwarder_with_reply_to_and_originals() -> None:
    fakes = MemoryServices()
    run(rules(REWRITE), fakes, MemoryLedger())
    (mail,) = fakes.outbound.sent
    assert mail.mail_from == "fwd@example.com"
    parsed = BytesParser(policy=default).parsebytes(mail.content)
    assert str(parsed["From"]) == '"Alice via example.com" <fwd@example.com>'
    assert str(parsed["Reply-To"]) == "Alice <alice@sender.test>"
    assert str(parsed["X-Original-To"]) == "team@example.com"
    assert "DKIM-Signature" not in parsed
    assert parsed["X-Inbound-Forwarded"] == "fwd.test"


def test_the_null_sender_is_never_rewritten() -> None:
    fakes = MemoryServices()
    run(rules(PRESERVE), fakes, MemoryLedger(), mail_from="")
    assert {m.mail_from for m in fakes.outbound.sent} == {""}
    fakes = MemoryServices()
    run(rules(REWRITE), fakes, MemoryLedger(), mail_from="")
    assert {m.mail_from for m in fakes.outbound.sent} == {""}


@dataclass
class RefusingOnce:
    """The in-memory outbound, but the first send to `refused` fails transiently."""

    refused: str
    sent: list[OutboundMail] = field(default_factory=list)
    failed: int = 0

    async def send(self, mail: OutboundMail) -> None:
        if self.refused in mail.rcpt_to and not self.failed:
            self.failed += 1
            raise TransientActionError("451 4.3.0 try later")
        self.sent.append(mail)

    async def max_size(self) -> int | None:
        return None


def test_a_retry_sends_only_to_the_destinations_not_yet_done() -> None:
    fakes = MemoryServices()
    outbound = RefusingOnce("ops@dest.test")
    fakes.services = dataclasses.replace(fakes.services, outbound=outbound)
    ledger = MemoryLedger()
    first = run(rules(PRESERVE), fakes, ledger, rcpts=("team@example.com", "bob@example.com"))
    assert first.failed is not None
    assert [m.rcpt_to for m in outbound.sent] == [("team@dest.test",)]
    assert ledger.records[StepKey(0, 0, "ops@dest.test")].outcome == "failed"
    second = run(rules(PRESERVE), fakes, ledger, rcpts=("team@example.com", "bob@example.com"))
    assert second.failed is None
    assert [m.rcpt_to for m in outbound.sent] == [
        ("team@dest.test",),
        ("ops@dest.test",),
        ("bob@dest.test",),
    ]
    # Done: a third attempt replays the step and sends nothing.
    run(rules(PRESERVE), fakes, ledger, rcpts=("team@example.com", "bob@example.com"))
    assert len(outbound.sent) == 3


def test_a_message_we_forwarded_already_is_not_forwarded_again() -> None:
    fakes = MemoryServices()
    ledger = MemoryLedger()
    run(rules(PRESERVE), fakes, ledger, raw=b"X-Inbound-Forwarded: fwd.test\r\n" + RAW)
    assert fakes.outbound.sent == []
    detail = ledger.records[StepKey(0, 0)].result
    assert detail == "not forwarded: already forwarded by fwd.test (X-Inbound-Forwarded)"


@pytest.mark.parametrize(("on_oversize", "dsns"), [("bounce", 1), ("drop", 0)])
def test_over_the_relays_size_it_bounces_with_5_3_4_or_drops(on_oversize: str, dsns: int) -> None:
    fakes = MemoryServices()
    fakes.outbound.size = len(RAW)  # the marker makes it larger than the relay takes
    action = PRESERVE.replace("}", f", on_oversize: {on_oversize}}}")
    ledger = MemoryLedger()
    result = run(rules(action), fakes, ledger)
    assert result.failed is None
    assert fakes.outbound.sent == []
    assert len(fakes.mailer.sent) == dsns
    if dsns:
        (dsn,) = fakes.mailer.sent
        assert (dsn.smtp_reply_code, dsn.status_code, dsn.to) == (
            "552",
            "5.3.4",
            "alice@sender.test",
        )
    assert (ledger.records[StepKey(0, 0)].result or "").startswith(
        "bounced: " if dsns else "dropped: "
    )


def test_via_ses_goes_to_the_ses_outbound_only() -> None:
    fakes = MemoryServices()
    ses = RefusingOnce("nobody")
    fakes.services = dataclasses.replace(fakes.services, ses_outbound=ses)
    run(
        rules("{type: forward, to: a@dest.test, via: ses, from_address: fwd@example.com}"),
        fakes,
        MemoryLedger(),
    )
    assert fakes.outbound.sent == []
    (mail,) = ses.sent
    assert b'From: "Alice via example.com" <fwd@example.com>\r\n' in mail.content


# --- check, evaluate, test -------------------------------------------------------------------

FILES = """\
version: 1
name: t
domains: [example.com]
rules:
  - name: fwd
    recipients: ['re:(?P<who>[a-z]+)@example\\.com']
    actions:
      - type: forward
        to: ['\\g<who>@dest.test', ops@dest.test]
        from_address: fwd@example.com
        srs_domain: srs.example.com
"""


def write_files(tmp_path: Path) -> Path:
    (tmp_path / "rules.yaml").write_text(FILES)
    (tmp_path / "m.eml").write_bytes(
        b"From: Alice <alice@sender.test>\r\nSubject: hi\r\n\r\nbody\r\n"
    )
    return tmp_path


def test_evaluate_shows_destinations_mode_and_srs_sender(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = write_files(tmp_path)
    args = ["evaluate", "--rules", str(base / "rules.yaml"), "--eml", str(base / "m.eml")]
    assert main([*args, "--rcpt", "team@example.com"]) == 0
    out = capsys.readouterr().out
    assert "forwards to team@dest.test (for team@example.com), ops@dest.test" in out
    assert "From mode: preserve (when_dmarc: DMARC policy none published)" in out
    keys = SrsKeys.from_env(SECRETS)
    assert keys is not None
    sender = out.split("envelope sender: ")[1].split()[0]
    assert srs_reverse(sender, keys, datetime.now(UTC)) == "alice@sender.test"
    rewritten = [*args, "--rcpt", "team@example.com", "--verdict", "dmarc=FAIL"]
    assert main([*rewritten, "--verdict", "dmarc_policy=quarantine"]) == 0
    out = capsys.readouterr().out
    assert "From mode: rewrite (when_dmarc: p=quarantine and no aligned DKIM" in out
    assert "envelope sender: fwd@example.com" in out


def test_test_files_assert_the_forwards_in_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = write_files(tmp_path)
    (base / "f.test.yaml").write_text(
        "rules: rules.yaml\ncases:\n"
        "  - {name: right, eml: m.eml, rcpt: [team@example.com],"
        " expect: {forwards: [team@dest.test, ops@dest.test]}}\n"
        "  - {name: wrong, eml: m.eml, rcpt: [team@example.com],"
        " expect: {forwards: [ops@dest.test, team@dest.test]}}\n"
    )
    assert main(["test", str(base / "f.test.yaml")]) == 1
    out = capsys.readouterr().out
    assert "PASS  right" in out
    assert (
        "f.test.yaml:4: wrong: forwards: expected [ops@dest.test, team@dest.test], "
        "saw [team@dest.test, ops@dest.test]"
    ) in out


def test_check_exits_2_naming_an_unreadable_key_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = write_files(tmp_path)
    key = tmp_path / "missing.pem"
    text = FILES + f"        dkim: {{domain: example.com, selector: s1, key_file: {key}}}\n"
    (base / "rules.yaml").write_text(text)
    assert main(["check", str(base / "rules.yaml")]) == 2
    err = capsys.readouterr().err
    assert "rules.yaml:12:" in err
    assert f"rules[0].actions[0].dkim.key_file: dkim key_file {key}: no such file" in err


def test_check_warns_for_ses_with_preserve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "version: 1\nname: t\ndomains: [example.com]\nrules:\n"
        + rules("{type: forward, to: a@b.test, via: ses, from_mode: preserve}")
    )
    assert main(["check", str(path)]) == 0
    assert "warning: rules[0].actions[0].from_mode: via: ses with from_mode: preserve" in (
        capsys.readouterr().err
    )
