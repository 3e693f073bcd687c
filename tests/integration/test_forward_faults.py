"""Forwarding under faults (SPEC section 3b), on the loopback chain of `forward_chain`: the
relay down, the forwarder killed between two destinations of one message, a message over the
relay's SIZE, and two forwarders that forward to each other."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.forward_chain import (
    FORWARDER_IP,
    SENDER_IP,
    SRS_SECRETS,
    Chain,
    MailDomain,
    PrivatePostfix,
    arrivals,
    forward_chain,
    send,
    write_zone,
)
from tests.integration.receiver import (
    DEADLINE,
    Child,
    events_of,
    free_port,
    start_child,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RULES = """\
version: 1
name: forwarder
domains: [fwd.chain.test]
rules:
  - name: team
    recipients: [team@fwd.chain.test]
    actions:
      - type: forward
        to: [first@dest.test, second@dest.test]
        from_mode: preserve
        srs_domain: srs.fwd.chain.test
"""
MESSAGE = (
    b"From: Alice <alice@sender.test>\r\nTo: team@fwd.chain.test\r\nSubject: faults\r\n"
    b"Date: Sun, 06 Dec 2026 12:00:00 +0000\r\nMessage-ID: <f1@sender.test>\r\n\r\nHello.\r\n"
)


def domains() -> list[MailDomain]:
    return [
        MailDomain("sender.test", ips=(SENDER_IP,), dmarc="none"),
        MailDomain("fwd.chain.test", ips=(FORWARDER_IP,)),
        MailDomain("srs.fwd.chain.test", ips=(FORWARDER_IP,), dmarc=None),
        MailDomain("dest.test"),
    ]


def queued(child: Child) -> list[str]:
    queue = child.data_dir / "spool" / "queue"
    return sorted(p.name for p in queue.iterdir()) if queue.is_dir() else []


def stop(child: Child) -> None:
    child.signal(signal.SIGTERM)
    try:
        child.process.wait(DEADLINE)
    except subprocess.TimeoutExpired:
        child.kill()


def restart_forwarder(tmp_path: Path, chain: Chain, relay_port: int) -> Child:
    """The forwarder again, on its data directory and port, as `forward_chain` started it."""
    return start_child(
        tmp_path / "forwarder",
        "--hostname",
        "fwd.chain.test",
        "--dns-zone",
        str(chain.zone),
        "--relay",
        f"127.0.0.1:{relay_port}",
        "--retry-delay",
        "1s",
        "--max-retry-delay",
        "2s",
        port=chain.forwarder.port,
        env={"INBOUND_SRS_SECRETS": SRS_SECRETS},
    )


def restart_destination(tmp_path: Path, chain: Chain) -> Child:
    return start_child(
        tmp_path / "destination",
        "--hostname",
        "mx.destination.test",
        "--dns-zone",
        str(chain.zone),
        "--relay",
        f"127.0.0.1:{chain.forwarder.port}",
        port=chain.destination.port,
    )


def restrict(postfix: PrivatePostfix, restrictions: str | None) -> None:
    """Set (or remove) the private Postfix's smtpd_recipient_restrictions, and reload it."""
    conf = str(postfix.conf)
    if restrictions is None:
        command = ["/usr/sbin/postconf", "-c", conf, "-X", "smtpd_recipient_restrictions"]
    else:
        setting = f"smtpd_recipient_restrictions={restrictions}"
        command = ["/usr/sbin/postconf", "-c", conf, "-e", setting]
    subprocess.run(command, check=True, timeout=DEADLINE, capture_output=True)
    subprocess.run(
        ["/usr/sbin/postfix", "-c", conf, "reload"],
        check=True,
        timeout=DEADLINE,
        capture_output=True,
    )


def rcpts_arrived(data_dir: Path) -> Counter[str]:
    return Counter(r for a in arrivals(data_dir) for r in a.rcpt_to)


def settle(child: Child) -> None:
    """Until the forwarder's queue is empty, then a little longer: nothing more is sent."""
    wait_for(lambda: not queued(child), "the forwarder's queue to empty")
    time.sleep(1.5)  # longer than --max-retry-delay: a stray retry would show


def test_the_relay_down_is_transient_and_each_destination_arrives_once(tmp_path: Path) -> None:
    with forward_chain(tmp_path, forwarder_rules=RULES, domains=domains()) as chain:
        stop(chain.destination)  # the forwarder's relay is down
        message_id = chain.send("alice@sender.test", ["team@fwd.chain.test"], MESSAGE)
        failed = wait_for(
            lambda: events_of(chain.forwarder, "action.failed", message_id), "a failed attempt"
        )
        assert failed[0]["transient"] is True
        assert queued(chain.forwarder) == [message_id]
        destination = restart_destination(tmp_path, chain)
        try:
            wait_for(lambda: len(rcpts_arrived(destination.data_dir)) == 2, "both destinations")
            settle(chain.forwarder)
            assert rcpts_arrived(destination.data_dir) == {
                "first@dest.test": 1,
                "second@dest.test": 1,
            }
        finally:
            stop(destination)


def test_sigkill_between_two_destinations_sends_the_second_once_and_the_first_not_again(
    tmp_path: Path,
) -> None:
    """The private Postfix relays to the destination but defers second@ at RCPT (450): the
    forwarder sends first@, records it, and fails second@ (transient). It is killed there,
    Postfix takes second@ again, the forwarder restarts and finishes the message."""
    with forward_chain(tmp_path, forwarder_rules=RULES, domains=domains(), postfix=True) as chain:
        postfix = chain.postfix
        assert postfix is not None
        access = postfix.root / "access"
        access.write_text("second@dest.test 450 4.2.0 try again later\n")
        restrict(postfix, f"check_recipient_access texthash:{access}, permit_mynetworks, reject")
        message_id = chain.send("alice@sender.test", ["team@fwd.chain.test"], MESSAGE)
        wait_for(
            lambda: [
                e
                for e in events_of(chain.forwarder, "action.failed", message_id)
                if e.get("destination") == "second@dest.test"
            ],
            "second@ deferred",
        )
        sent = events_of(chain.forwarder, "action.succeeded", message_id)
        assert [e.get("destination") for e in sent] == ["first@dest.test"]
        chain.forwarder.kill()  # SIGKILL, between the two destinations
        access.write_text("")
        restrict(postfix, None)
        forwarder = restart_forwarder(tmp_path, chain, postfix.port)
        try:
            wait_for(
                lambda: rcpts_arrived(chain.destination.data_dir)["second@dest.test"] == 1,
                "second@ at the destination",
            )
            settle(forwarder)
            again = events_of(forwarder, "action.succeeded", message_id)
            # The restarted forwarder sent second@ only, then the step was done.
            assert [e.get("destination") for e in again] == ["second@dest.test", None]
            postfix.flush()
            time.sleep(1.5)
            assert rcpts_arrived(chain.destination.data_dir) == {
                "first@dest.test": 1,
                "second@dest.test": 1,
            }
        finally:
            stop(forwarder)


def test_over_the_relays_size_the_sender_gets_a_dsn_with_5_3_4(tmp_path: Path) -> None:
    with forward_chain(
        tmp_path,
        forwarder_rules=RULES,
        domains=domains(),
        destination_args=("--max-message-size", "4096"),
    ) as chain:
        big = MESSAGE + b"x" * 76 + b"\r\n"
        big += (b"y" * 76 + b"\r\n") * 60
        message_id = chain.send("alice@sender.test", ["team@fwd.chain.test"], big)
        (dsn,) = chain.wait_arrivals(1)
        settle(chain.forwarder)
        assert dsn.rcpt_to == ("alice@sender.test",)
        assert dsn.mail_from == ""
        assert b"Status: 5.3.4" in dsn.content
        assert dsn.headers.get_content_type() == "multipart/report"
        assert len(chain.arrivals()) == 1  # no forward went out
        oversize = events_of(chain.forwarder, "forward.oversize", message_id)
        assert oversize[0]["limit"] == 4096


LOOP_RULES = """\
version: 1
name: {name}
domains: [{domain}]
rules:
  - name: loop
    recipients: ['{rcpt}']
    actions:
      - type: forward
        to: ['{to}']
        from_mode: preserve
        srs_domain: srs.{domain}
"""


def test_two_forwarders_pointing_at_each_other_stop_with_a_trace_line(tmp_path: Path) -> None:
    zone = write_zone(
        tmp_path / "loop.zone",
        [
            MailDomain("sender.test", ips=(SENDER_IP,), dmarc="none"),
            MailDomain("a.test", ips=(FORWARDER_IP,)),
            MailDomain("srs.a.test", ips=(FORWARDER_IP,), dmarc=None),
            MailDomain("b.test", ips=(FORWARDER_IP,)),
            MailDomain("srs.b.test", ips=(FORWARDER_IP,), dmarc=None),
        ],
    )
    port_a, port_b = free_port(), free_port()
    children: list[Child] = []
    try:
        for name, domain, rcpt, to, port, relay in (
            ("a", "a.test", "x@a.test", "y@b.test", port_a, port_b),
            ("b", "b.test", "y@b.test", "x@a.test", port_b, port_a),
        ):
            folder = tmp_path / name
            folder.mkdir()
            (folder / "rules.yaml").write_text(
                LOOP_RULES.format(name=name, domain=domain, rcpt=rcpt, to=to)
            )
            children.append(
                start_child(
                    folder,
                    "--hostname",
                    f"mx.{domain}",
                    "--dns-zone",
                    str(zone),
                    "--relay",
                    f"127.0.0.1:{relay}",
                    port=port,
                    env={"INBOUND_SRS_SECRETS": SRS_SECRETS},
                )
            )
        a, b = children
        send(a.port, "alice@sender.test", ["x@a.test"], MESSAGE)
        stopped = wait_for(lambda: events_of(a, "forward.not_forwarded"), "the loop to stop")
        assert stopped[0]["reason"] == "already forwarded by mx.a.test (X-Inbound-Forwarded)"
        settle(a)
        settle(b)
        # A forwarded once, B once, A refused the second round: no storm.
        assert len(events_of(a, "forward.not_forwarded")) == 1
        assert len(events_of(b, "forward.not_forwarded")) == 0
        forwarded_a = [e for e in events_of(a, "action.succeeded") if e.get("destination")]
        forwarded_b = [e for e in events_of(b, "action.succeeded") if e.get("destination")]
        assert (len(forwarded_a), len(forwarded_b)) == (1, 1)
    finally:
        for child in children:
            stop(child)
