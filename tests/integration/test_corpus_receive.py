"""Every message of fixtures/corpus/eml through one real receiver, sent with smtplib: each is
queued (or rightly refused), dispatched to the S3 target, and stored as it was sent on the
wire, byte for byte, after the prepended headers (SPEC section 7: malformed MIME is stored as
received and never crashes the receiver)."""

from __future__ import annotations

import re
import smtplib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.receiver import ROOT, Running, in_process, settings_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

EML = ROOT / "fixtures" / "corpus" / "eml"
FILES = {path.relative_to(EML).as_posix(): path for path in sorted(EML.rglob("*.eml"))}

SENDER = "corpus@sender.example"
RECIPIENT = "bob@example.com"
QUEUED = re.compile(rb"2\.0\.0 Ok: queued as (\S+)")
LINE_TOO_LONG = (500, b"5.5.2 Line too long (RFC 5321 4.5.3.1.6)")
MAX_LINE = 1000  # octets, CRLF included (RFC 5321 4.5.3.1.6; SPEC section 7)

# Refused, rightly: a line longer than 1000 octets with its CRLF. The limit stays where it is.
TOO_LONG = {
    "malformed/mime4j__very_long_boundary.eml": "a ~7000-character boundary: 4 lines of 7003-7044 octets",
    "malformed/mime4j__very_long_lines.eml": "a body line of 7082 octets",
    "malformed/rspamd__dkim_huge_h_list_15k_line.eml": "a DKIM-Signature header on one line of 15529 octets",
    "real/sisimai__ses_sns_bounce_notification_email.eml": "an SES Bounce JSON body line of 1037 octets",
}

# What the receiver prepends (SES receiving headers), then the rule's add_header on top.
PREPENDED = [
    "X-Inbound-Test",
    "Return-Path",
    "Received",
    "X-SES-Spam-Verdict",
    "X-SES-Virus-Verdict",
    "Received-SPF",
    "Authentication-Results",
]

# smtplib's own line-ending fix (it applies it to str messages only; these are bytes).
fix_eols: Callable[[str], str] = smtplib._fix_eols  # type: ignore[attr-defined]


def on_the_wire(raw: bytes) -> bytes:
    """The message as a client sends it, before dot-stuffing: CRLF line endings throughout
    and a final CRLF. Latin-1 maps bytes to code points one to one, so nothing else changes."""
    wire = fix_eols(raw.decode("latin-1")).encode("latin-1")
    return wire if wire.endswith(b"\r\n") else wire + b"\r\n"


def longest_line(wire: bytes) -> int:
    return max(len(line) + 2 for line in wire.split(b"\r\n")[:-1])


@dataclass(frozen=True)
class Outcome:
    wire: bytes
    replies: list[tuple[int, bytes]]  # to MAIL, RCPT, DATA
    error: str | None = None


@dataclass(frozen=True)
class Delivery:
    outcomes: dict[str, Outcome]
    stored: dict[str, bytes]
    queued: list[str]
    dead: list[str]


def send(running: Running, wire: bytes) -> Outcome:
    """One message in one session; smtplib does the dot-stuffing and the final CRLF.CRLF."""
    replies: list[tuple[int, bytes]] = []
    try:
        with smtplib.SMTP("127.0.0.1", running.port, timeout=10) as client:
            client.ehlo("corpus.test")
            replies.append(client.mail(SENDER))
            replies.append(client.rcpt(RECIPIENT))
            replies.append(client.data(wire))
    except (smtplib.SMTPException, OSError) as exc:
        return Outcome(wire, replies, f"{type(exc).__name__}: {exc}")
    return Outcome(wire, replies)


@pytest.fixture(scope="module")
def delivery(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Delivery]:
    """All files through one receiver, then what the dispatcher made of them."""
    tmp_path = tmp_path_factory.mktemp("corpus")
    with in_process(settings_for(tmp_path)) as running:
        outcomes = {
            name: send(running, on_the_wire(path.read_bytes())) for name, path in FILES.items()
        }
        running.wait_idle()
        dead_dir = running.data_dir / "spool" / "dead"
        dead = sorted(p.name for p in dead_dir.iterdir()) if dead_dir.is_dir() else []
        yield Delivery(outcomes, running.stored(), running.queued(), dead)


def header_names(head: bytes) -> list[str]:
    lines = head.decode("utf-8", "replace").split("\r\n")
    return [line.split(":", 1)[0] for line in lines if line and line[0] not in " \t"]


@pytest.mark.parametrize("name", list(FILES))
def test_corpus_message(name: str, delivery: Delivery) -> None:
    outcome = delivery.outcomes[name]
    assert outcome.error is None, outcome
    mail, rcpt, data = outcome.replies
    assert mail == (250, b"2.1.0 Ok")
    assert rcpt == (250, b"2.1.5 Ok")
    if name in TOO_LONG:
        assert longest_line(outcome.wire) > MAX_LINE
        assert data == LINE_TOO_LONG
        assert not any(content.endswith(outcome.wire) for content in delivery.stored.values())
        return
    assert longest_line(outcome.wire) <= MAX_LINE, "a line over the limit: list it in TOO_LONG"
    code, text = data
    match = QUEUED.fullmatch(text)
    assert code == 250, data
    assert match, data
    message_id = match.group(1).decode()
    assert message_id in delivery.stored, f"{message_id} not in the S3 target"
    content = delivery.stored[message_id]
    # The message as sent, after transparency is undone, follows the prepended headers.
    assert content.endswith(outcome.wire)
    head = content[: len(content) - len(outcome.wire)]
    assert head.endswith(b"\r\n")
    assert header_names(head) == PREPENDED
    assert f"Return-Path: <{SENDER}>\r\n".encode() in head
    assert f"id {message_id}".encode() in head


def test_everything_was_dispatched(delivery: Delivery) -> None:
    accepted = [o for o in delivery.outcomes.values() if o.replies[-1:] and o.replies[-1][0] == 250]
    assert len(accepted) == len(FILES) - len(TOO_LONG)
    assert len(delivery.stored) == len(accepted)
    assert delivery.queued == []
    assert delivery.dead == []


@pytest.mark.parametrize(
    ("line", "reply_code"),
    [
        (b"y" * 998, 250),
        (b"y" * 999, 500),
        # A leading dot is doubled on the wire and does not count (RFC 5321 4.5.3.1.6).
        (b"." + b"y" * 997, 250),
        (b"." + b"y" * 998, 500),
    ],
    ids=["1000-octets-accepted", "1001-octets-refused", "dot-1000-accepted", "dot-1001-refused"],
)
def test_the_line_limit_is_1000_octets(line: bytes, reply_code: int, tmp_path: Path) -> None:
    """The boundary TOO_LONG relies on: 1000 octets with the CRLF pass, 1001 do not."""
    wire = b"Subject: limit\r\n\r\n" + line + b"\r\n"
    with in_process(settings_for(tmp_path)) as running:
        outcome = send(running, wire)
        running.wait_idle()
        stored = list(running.stored().values())
    assert outcome.error is None, outcome
    if reply_code == 250:
        assert outcome.replies[-1][0] == 250, outcome.replies[-1]
        assert len(stored) == 1
        assert stored[0].endswith(wire)
    else:
        assert outcome.replies[-1] == LINE_TOO_LONG
        assert stored == []
