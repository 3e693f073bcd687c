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
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from inbound.core.errors import InputError
from inbound.receive.limits import ReceiverLimits  # noqa: F401 - settings_for's companions
from inbound.spool.retry import RetryPolicy
from inbound.srs import SrsKeys, srs_forward
from tests.integration.forward_chain import rcpt_replies, send
from tests.integration.receiver import Running, free_port, in_process, settings_for, wait_for
from tests.integration.srs_support import FORWARD_RULES, forward_stand_in  # noqa: F401 - a fixture
from tests.integration.test_relay import SinkHandler

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("forward_stand_in"),
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
    rewrite = settings_for(tmp_path, FORWARD_RULES.replace("preserve", "rewrite"))
    with in_process(rewrite) as running:
        assert rcpt_replies(running.port, [srs("alice@sender.example")])[0][:9] == "550 5.1.1"
