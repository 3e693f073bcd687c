"""The receive side of SRS (SPEC section 3b), on the wire against a real `inbound serve`.

A rule set whose forward names an `srs_domain` accepts `RCPT TO` an SRS address there only when
its hash and age verify, and relays what arrives (the bounces of its forwards) to the address
it encodes with `MAIL FROM:<>`, through `--relay` (a real aiosmtpd server here) or into the
local outbox; anything else there gets `550 5.1.1`. `forward_chain` has the chains of two
`inbound serve`s; these run one receiver in this process.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from inbound.core.errors import InputError
from inbound.spool.retry import RetryPolicy
from inbound.srs import SrsKeys, srs_forward
from tests.integration.forward_chain import (
    FORWARDER_IP,
    SENDER_IP,
    SRS_SECRETS,
    MailDomain,
    forward_chain,
    rcpt_replies,
    send,
)
from tests.integration.receiver import (
    ROOT,
    Running,
    events_of,
    free_port,
    in_process,
    settings_for,
    start_child,
    wait_for,
)
from tests.integration.srs_support import FORWARD_RULES
from tests.integration.test_relay import SinkHandler

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(60),
]

SECRETS = "current-secret,previous-secret"
SRS_DOMAIN = "fwd.example.net"
DSN = (
    b"From: MAILER-DAEMON@mx.dest.example\r\nTo: alice@sender.example\r\n"
    b"Subject: Undelivered Mail Returned to Sender\r\nAuto-Submitted: auto-replied\r\n\r\n"
    b"The mail you sent to bob@dest.example could not be delivered.\r\n"
)


def srs(address: str, key: bytes = b"current-secret", *, days_ago: int = 0) -> str:
    now = datetime.now(UTC) - timedelta(days=days_ago)
    return srs_forward(address, SRS_DOMAIN, SrsKeys((key,)), now)


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INBOUND_SRS_SECRETS", SECRETS)


@pytest.fixture
def events(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="inbound")
    return caplog


def of(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    return [dict(r.fields) for r in caplog.records if getattr(r, "event", None) == event]  # type: ignore[attr-defined]


@pytest.fixture
def receiver(tmp_path: Path, secrets: None) -> Iterator[Running]:
    with in_process(settings_for(tmp_path, FORWARD_RULES)) as running:
        yield running


def test_only_addresses_inbound_signed_are_accepted(receiver: Running) -> None:
    valid = srs("alice@sender.example")
    previous_key = srs("carol@sender.example", b"previous-secret")
    rotated_out = srs("dave@sender.example", b"retired-secret")
    expired = srs("erin@sender.example", days_ago=22)
    tag, hash_, rest = valid.split("=", 2)
    forged = f"{tag}={'B' if hash_[0] == 'A' else 'A'}{hash_[1:]}={rest}"
    replies = rcpt_replies(
        receiver.port,
        [
            valid,
            valid.lower(),  # mailers lowercase addresses
            previous_key,
            forged,
            expired,
            rotated_out,
            f"SRS0=garbage@{SRS_DOMAIN}",
            valid.replace("=alice@", "=mallory@"),
            f"postmaster@{SRS_DOMAIN}",  # not SRS, and the srs_domain receives nothing else
        ],
    )
    codes = [reply[:9] for reply in replies]
    assert codes == [
        "250 2.1.5",
        "250 2.1.5",
        "250 2.1.5",
        "550 5.1.1",
        "550 5.1.1",
        "550 5.1.1",
        "550 5.1.1",
        "550 5.1.1",
        "550 5.7.1",
    ], replies


def test_a_bounce_is_relayed_to_the_original_sender_from_the_null_sender(
    tmp_path: Path, secrets: None
) -> None:
    handler = SinkHandler()
    sink = Controller(handler, hostname="127.0.0.1", port=free_port())
    sink.start()
    try:
        settings = settings_for(tmp_path, FORWARD_RULES, relay=("127.0.0.1", sink.port))
        with in_process(settings) as running:
            message_id = send(running.port, "", [srs("Alice@Sender.example")], DSN)
            wait_for(lambda: handler.received, "the relayed bounce")
            running.wait_idle()
    finally:
        sink.stop()
    [relayed] = handler.received
    assert relayed.mail_from == "<>"
    assert relayed.rcpt_tos == ("Alice@Sender.example",)
    # The bounce as received, under this hop's trace headers.
    assert relayed.content.endswith(DSN)
    assert b"Received: from " in relayed.content[: -len(DSN)]
    assert message_id


def test_without_a_relay_the_bounce_goes_to_the_local_outbox(tmp_path: Path, secrets: None) -> None:
    with in_process(settings_for(tmp_path, FORWARD_RULES)) as running:
        message_id = send(running.port, "", [srs("alice@sender.example")], DSN)
        outbox = running.data_dir / "forward" / "outbox.jsonl"
        wait_for(outbox.exists, "the outbox line")
        running.wait_idle()
    [line] = [json.loads(text) for text in outbox.read_text().splitlines()]
    assert line["messageId"] == message_id
    assert (line["mailFrom"], line["rcptTo"]) == ("", ["alice@sender.example"])
    content = (running.data_dir / "forward" / line["file"]).read_bytes()
    assert content.endswith(DSN)
    assert oct(os.stat(outbox).st_mode & 0o777) == "0o600"


def test_a_relay_that_is_down_is_retried_and_gets_the_bounce_once(
    tmp_path: Path, secrets: None, events: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    settings = settings_for(
        tmp_path,
        FORWARD_RULES,
        relay=("127.0.0.1", port),
        retry=RetryPolicy(base_delay=0.2, max_delay=0.5),
    )
    handler = SinkHandler()
    with in_process(settings) as running:
        message_id = send(running.port, "", [srs("alice@sender.example")], DSN)
        [failed, *_] = wait_for(lambda: of(events, "action.failed"), "a failed relay attempt")
        assert failed["message_id"] == message_id
        assert f"relay 127.0.0.1:{port}" in failed["error"]
        assert running.queued() == [message_id]
        sink = Controller(handler, hostname="127.0.0.1", port=port)
        sink.start()
        try:
            wait_for(lambda: handler.received, "the bounce once the relay is back")
            running.wait_idle()
        finally:
            sink.stop()
    assert [r.rcpt_tos for r in handler.received] == [("alice@sender.example",)]
    assert running.queued() == []


def test_serve_refuses_to_start_without_secrets_naming_the_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INBOUND_SRS_SECRETS", raising=False)
    settings = settings_for(tmp_path, FORWARD_RULES)
    message = r"rule 'forward-team' forwards with SRS .* INBOUND_SRS_SECRETS is not set"
    with pytest.raises(InputError, match=message), in_process(settings):
        pass
    monkeypatch.setenv("INBOUND_SRS_SECRETS", "a,,b")
    with (
        pytest.raises(InputError, match="INBOUND_SRS_SECRETS: an empty secret"),
        in_process(settings),
    ):
        pass
    # A forward that rewrites From keeps the envelope sender its own: no SRS, no secret.
    monkeypatch.delenv("INBOUND_SRS_SECRETS")
    rewrite = settings_for(
        tmp_path,
        FORWARD_RULES.replace(
            "from_mode: preserve", "from_mode: rewrite\n        from_address: fwd@example.com"
        ),
    )
    with in_process(rewrite) as running:
        assert rcpt_replies(running.port, [srs("alice@sender.example")])[0][:9] == "550 5.1.1"


# -- the chain: two `inbound serve`s, the bounce of a forward comes back --------------------

CHAIN_FORWARDER = """\
version: 1
name: forwarder
domains: [fwd.chain.test]
rules:
  - name: forward-team
    recipients: [team@fwd.chain.test]
    actions:
      - type: forward
        to: [bob@dest.test]
        from_mode: preserve
        srs_domain: srs.fwd.chain.test
"""

# The destination keeps everything, and bounces what bob gets after accepting it: its DSN goes
# to the forward's envelope sender (the SRS address), through its --relay (the forwarder).
CHAIN_DESTINATION = """\
version: 1
name: destination
domains: [{domains}]
rules:
  - name: keep
    actions:
      - {{type: s3, bucket: mail, prefix: in/}}
      - {{type: sns, topic_arn: "{topic}"}}
  - name: bob-has-left
    recipients: [bob@dest.test]
    actions:
      - {{type: bounce, smtp_reply_code: "550", status_code: "5.1.1", message: "Bob has left", sender: mailer-daemon@dest.test}}
"""


def test_a_forwards_bounce_comes_back_to_the_original_sender(tmp_path: Path) -> None:
    sender = MailDomain("sender.test", ips=(SENDER_IP,), dmarc="none")
    forwarder = MailDomain("srs.fwd.chain.test", ips=(FORWARDER_IP,), dmarc=None)
    dest = MailDomain("dest.test", dmarc=None)
    original = (
        b"From: Alice <alice@sender.test>\r\nTo: team@fwd.chain.test\r\n"
        b"Subject: for the team\r\nMessage-ID: <chain-1@sender.test>\r\n\r\nHello team.\r\n"
    )
    with forward_chain(
        tmp_path,
        forwarder_rules=CHAIN_FORWARDER,
        domains=[sender, forwarder, dest],
        destination_domains=["dest.test", "sender.test"],
        destination_rules=CHAIN_DESTINATION,
    ) as chain:
        chain.send("alice@sender.test", ["team@fwd.chain.test"], original)
        forwarded, bounce = chain.wait_arrivals(2)
        # Forged and expired SRS addresses at the srs_domain, on the wire of the forwarder.
        tag, hash_, rest = forwarded.mail_from.split("=", 2)
        forged = f"{tag}={'B' if hash_[0] == 'A' else 'A'}{hash_[1:]}={rest}"
        keys = SrsKeys(tuple(s.encode() for s in SRS_SECRETS.split(",")))
        old = datetime.now(UTC) - timedelta(days=22)
        expired = srs_forward("alice@sender.test", "srs.fwd.chain.test", keys, old)
        replies = rcpt_replies(chain.forwarder.port, [forged, expired, forwarded.mail_from])
        relayed = [e for e in chain.forwarder_log() if e.get("event") == "action.succeeded"]
    # The forward left with an SRS envelope sender that SPF passes at the destination.
    assert forwarded.mail_from.startswith("SRS0=")
    assert forwarded.mail_from.endswith("=sender.test=alice@srs.fwd.chain.test")
    assert forwarded.rcpt_to == ("bob@dest.test",)
    assert forwarded.verdicts["spf"] == "PASS"
    # The DSN came back to the SRS address and went on to Alice from the null sender.
    assert (bounce.mail_from, bounce.rcpt_to) == ("", ("alice@sender.test",))
    report = bounce.headers
    assert report.get_content_type() == "multipart/report"
    assert "Bob has left" in bounce.content.decode()
    assert [r[:9] for r in replies] == ["550 5.1.1", "550 5.1.1", "250 2.1.5"]
    assert any(e.get("rule") == "[srs bounces]" for e in relayed), relayed


def _start_serve(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`inbound serve` on tmp_path/rules.yaml, expected to refuse to start."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "inbound",
            "serve",
            "--rules",
            str(tmp_path / "rules.yaml"),
            "--data-dir",
            str(tmp_path / "data"),
            "--listen",
            "127.0.0.1:0",
        ],
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_exits_2_naming_the_rule_without_srs_secrets(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(CHAIN_FORWARDER)
    env = {k: v for k, v in os.environ.items() if k != "INBOUND_SRS_SECRETS"}
    done = _start_serve(tmp_path, env)
    assert done.returncode == 2, done.stderr
    assert "rule 'forward-team' forwards with SRS" in done.stderr
    assert "INBOUND_SRS_SECRETS is not set" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data").exists()  # refused before anything is made on disk


def test_serve_exits_2_naming_a_dkim_key_file_it_cannot_sign_with(tmp_path: Path) -> None:
    # Every forward of the rule would fail (dead letters); the start is the time to say so.
    key = tmp_path / "missing.pem"
    dkim = f"        dkim: {{domain: fwd.chain.test, selector: s1, key_file: {key}}}\n"
    (tmp_path / "rules.yaml").write_text(CHAIN_FORWARDER + dkim)
    done = _start_serve(tmp_path, {**os.environ, "INBOUND_SRS_SECRETS": "a-secret"})
    assert done.returncode == 2, done.stderr
    assert "rules.yaml:12:" in done.stderr
    assert f"rules[0].actions[0].dkim.key_file: dkim key_file {key}: no such file" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_reload_that_needs_srs_without_secrets_keeps_the_rules_in_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INBOUND_SRS_SECRETS", raising=False)
    child = start_child(tmp_path)  # receiver.RULES: no forward
    try:
        (tmp_path / "rules.yaml").write_text(FORWARD_RULES)
        child.signal(signal.SIGHUP)
        [failed] = wait_for(lambda: events_of(child, "rules.reload_failed"), "the refused reload")
        # Where the rule needs it, as every error of a rule file is told.
        [error] = failed["errors"]
        assert "rules.yaml:" in error
        assert "rules[0].actions[0].srs_domain" in error
        assert "forwards with SRS" in error
        assert "INBOUND_SRS_SECRETS is not set" in error
        # The old rules are in force: example.com's catch-all still takes any recipient.
        assert rcpt_replies(child.port, ["anyone@example.com"])[0][:9] == "250 2.1.5"
    finally:
        child.signal(signal.SIGTERM)
        child.process.wait(30)
