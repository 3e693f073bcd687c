"""A forwarding chain on loopback for the `forward` tests (SPEC section 3b), real servers only.

    sender (smtplib from 127.0.0.2) ──▶ forwarder: `inbound serve` (--relay) ──▶ [a private
    Postfix] ──▶ destination: `inbound serve`, the MX of the forwarded-to domains

Every server is a child process (`inbound serve` as users run it) and every domain is answered
by one zone file (`--dns-zone`) that both inbound servers read: SPF, DKIM keys and DMARC
records of the sender's, the forwarder's and the destination's domains. The sender connects
from 127.0.0.2 and the forwarder (and Postfix) from 127.0.0.1, so SPF tells a forward that kept
the original envelope sender (fails) from one with an SRS sender (passes).

The destination's DSNs (a `bounce` action after acceptance) go to the forwarder (its `--relay`),
so a bounce of a forward comes back to the SRS address it was sent from; the forwarder relays
it with `MAIL FROM:<>` through its own `--relay`, to the destination again, which must therefore
also receive the original sender's domain (`DESTINATION_RULES` does: it keeps everything).

What arrived at the destination is read from its files: `Chain.arrivals()` gives each message
with its envelope, the verdicts it got there and its bytes as received (the local SNS target's
notification and S3 object of `DESTINATION_RULES`).

The private Postfix is `tests.integration.private_postfix.PrivatePostfix`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import smtplib
import socket
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path
from typing import Any

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.integration.private_postfix import PrivatePostfix
from tests.integration.receiver import (
    DEADLINE,
    Child,
    free_port,
    log_events,
    start_child,
    wait_for,
)

__all__ = [
    "ARRIVED_TOPIC",
    "DESTINATION_RULES",
    "FORWARDER_IP",
    "SENDER_IP",
    "SRS_SECRETS",
    "Arrival",
    "Chain",
    "MailDomain",
    "PrivatePostfix",
    "arrivals",
    "forward_chain",
    "rcpt_replies",
    "read_reply",
    "send",
    "write_zone",
]

SENDER_IP = "127.0.0.2"
FORWARDER_IP = "127.0.0.1"
SRS_SECRETS = "chain-secret-new,chain-secret-old"
ARRIVED_TOPIC = "arn:aws:sns:us-east-1:123456789012:arrived"

# The destination keeps everything it gets, for every domain of the chain: an SNS notification
# (envelope, verdicts) and an S3 object (the bytes) per message.
DESTINATION_RULES = """\
version: 1
name: destination
domains: [{domains}]
rules:
  - name: keep
    actions:
      - {{type: s3, bucket: mail, prefix: in/}}
      - {{type: sns, topic_arn: "{topic}"}}
"""


# -- DNS -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MailDomain:
    """A domain of the chain as DNS publishes it: SPF for `ips`, a DMARC policy (None: no
    record), and an Ed25519 DKIM key under `selector` (made fresh; `sign` signs with it)."""

    name: str
    ips: tuple[str, ...] = ()
    dmarc: str | None = "none"
    selector: str = "chain"
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate, repr=False)

    @property
    def private_key(self) -> bytes:
        """The key as dkimpy signs with it (base64 of the 32 raw bytes, RFC 8463)."""
        raw = self.key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return base64.b64encode(raw)

    def pem_file(self, folder: Path) -> Path:
        """The key as a PKCS#8 PEM file (what a `dkim: {key_file}` of the forward reads)."""
        path = folder / f"{self.selector}.{self.name}.pem"
        path.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        return path

    def records(self) -> list[str]:
        public = self.key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        lines = []
        if self.ips:
            mechanisms = " ".join(f"ip4:{ip}" for ip in self.ips)
            lines.append(f'{self.name} TXT "v=spf1 {mechanisms} -all"')
        lines.append(
            f'{self.selector}._domainkey.{self.name} TXT "v=DKIM1; k=ed25519; '
            f'p={base64.b64encode(public).decode()}"'
        )
        if self.dmarc is not None:
            lines.append(f'_dmarc.{self.name} TXT "v=DMARC1; p={self.dmarc}"')
        return lines

    def sign(
        self, message: bytes, headers: Sequence[bytes] = (b"from", b"to", b"subject")
    ) -> bytes:
        """`message` under a DKIM-Signature of this domain (relaxed/relaxed, ed25519-sha256)."""
        signature = dkim.sign(
            message,
            self.selector.encode(),
            self.name.encode(),
            self.private_key,
            signature_algorithm=b"ed25519-sha256",
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=list(headers),
        )
        assert isinstance(signature, bytes)
        return signature + message


def write_zone(path: Path, domains: Sequence[MailDomain], extra: str = "") -> Path:
    """One zone file answering for every domain of the chain (the `--dns-zone` format)."""
    lines = ["; the forwarding chain's domains"]
    for domain in domains:
        lines.extend(domain.records())
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


# -- raw SMTP --------------------------------------------------------------------------------


def read_reply(sock: socket.socket) -> str:
    """One SMTP reply (every line of a multi-line one), as text."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"connection closed after {data!r}")
        data += chunk
        lines = data.split(b"\r\n")
        complete = [line for line in lines[:-1] if line]
        if complete and len(complete[-1]) >= 4 and complete[-1][3:4] == b" ":
            return data.decode("utf-8", "replace").strip()


def rcpt_replies(
    port: int, recipients: Sequence[str], *, mail_from: str = "", source_ip: str = SENDER_IP
) -> list[str]:
    """The reply to each `RCPT TO` of one transaction, as a raw client sees them."""
    with socket.create_connection(
        ("127.0.0.1", port), timeout=DEADLINE, source_address=(source_ip, 0)
    ) as sock:
        read_reply(sock)
        sock.sendall(b"EHLO client.test\r\n")
        read_reply(sock)
        sock.sendall(f"MAIL FROM:<{mail_from}>\r\n".encode())
        assert read_reply(sock).startswith("250")
        replies = []
        for address in recipients:
            sock.sendall(f"RCPT TO:<{address}>\r\n".encode())
            replies.append(read_reply(sock))
        sock.sendall(b"QUIT\r\n")
        return replies


def send(
    port: int,
    mail_from: str,
    recipients: Sequence[str],
    message: bytes,
    *,
    source_ip: str = SENDER_IP,
    helo: str = "mail.sender.test",
) -> str:
    """Send one message from `source_ip`; the queued message ID of the 250 to DATA."""
    with smtplib.SMTP(
        "127.0.0.1", port, local_hostname=helo, source_address=(source_ip, 0), timeout=DEADLINE
    ) as client:
        client.ehlo(helo)
        client.mail(mail_from)
        for address in recipients:
            code, text = client.rcpt(address)
            assert code == 250, f"RCPT TO:<{address}>: {code} {text!r}"
        code, text = client.data(message)
        assert code == 250, f"DATA: {code} {text!r}"
        return text.decode().rsplit(" ", 1)[-1]


# -- what arrived ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    """A message at the destination: its envelope, its verdicts there, its bytes as stored."""

    message_id: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    verdicts: Mapping[str, str]
    content: bytes

    @property
    def headers(self) -> Any:
        return message_from_bytes(self.content)


def arrivals(data_dir: Path, topic: str = "arrived") -> list[Arrival]:
    """Every message a server with `DESTINATION_RULES` kept, in order of arrival."""
    path = data_dir / "sns" / f"{topic}.jsonl"
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        notification = json.loads(json.loads(line)["Message"])
        mail, receipt = notification["mail"], notification["receipt"]
        message_id = mail["messageId"]
        found.append(
            Arrival(
                message_id=message_id,
                mail_from=mail["source"],
                rcpt_to=tuple(receipt["recipients"]),
                verdicts={
                    name: receipt[f"{name}Verdict"]["status"]
                    for name in ("spf", "dkim", "dmarc", "spam", "virus")
                },
                content=(data_dir / "s3" / "mail" / "in" / message_id).read_bytes(),
            )
        )
    return found


# -- the chain -------------------------------------------------------------------------------


@dataclass
class Chain:
    """The running chain: `send` to the forwarder as the sender; read `arrivals()`."""

    forwarder: Child
    destination: Child
    postfix: PrivatePostfix | None
    zone: Path
    domains: Mapping[str, MailDomain]

    def send(self, mail_from: str, recipients: Sequence[str], message: bytes) -> str:
        return send(self.forwarder.port, mail_from, recipients, message)

    def arrivals(self) -> list[Arrival]:
        return arrivals(self.destination.data_dir)

    def wait_arrivals(self, count: int, deadline: float = DEADLINE) -> list[Arrival]:
        """At least `count` arrivals at the destination (AssertionError after `deadline`)."""

        def enough() -> list[Arrival] | None:
            found = self.arrivals()
            return found if len(found) >= count else None

        return wait_for(enough, f"{count} message(s) at the destination", deadline)

    def forwarder_log(self) -> list[dict[str, Any]]:
        return log_events(self.forwarder.log)


def _stop(child: Child) -> None:
    if child.process.poll() is None:
        child.signal(signal.SIGTERM)
        try:
            child.process.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            child.kill()


@contextlib.contextmanager
def forward_chain(
    tmp_path: Path,
    *,
    forwarder_rules: str,
    domains: Sequence[MailDomain],
    destination_domains: Sequence[str] | None = None,
    destination_rules: str | None = None,
    postfix: bool = False,
    forwarder_args: Sequence[str] = (),
    destination_args: Sequence[str] = (),
    forwarder_env: Mapping[str, str] | None = None,
    zone_extra: str = "",
) -> Iterator[Chain]:
    """Start the destination, the Postfix if asked, then the forwarder; stop them all after.

    `forwarder_rules`: the forwarder's rule set (YAML text). `domains`: every domain DNS must
    answer for (the zone file both servers read). The destination receives mail for
    `destination_domains` (default: every domain of `domains`) with `destination_rules`
    (default: `DESTINATION_RULES`, which keeps everything; `{domains}` and `{topic}` are filled
    in), and sends its DSNs to the forwarder. The forwarder gets `INBOUND_SRS_SECRETS=SRS_SECRETS` unless `forwarder_env`
    says otherwise, and `--hostname fwd.chain.test`; `*_args` are more `inbound serve` flags."""
    zone = write_zone(tmp_path / "chain.zone", domains, zone_extra)
    names = destination_domains or [d.name for d in domains]
    forwarder_port = free_port()
    dest_dir = tmp_path / "destination"
    dest_dir.mkdir()
    template = DESTINATION_RULES if destination_rules is None else destination_rules
    (dest_dir / "rules.yaml").write_text(
        template.format(domains=", ".join(names), topic=ARRIVED_TOPIC)
    )
    started: list[Child] = []
    relay: PrivatePostfix | None = None
    try:
        destination = start_child(
            dest_dir,
            "--hostname",
            "mx.destination.test",
            "--dns-zone",
            str(zone),
            "--relay",
            f"127.0.0.1:{forwarder_port}",
            "--retry-delay",
            "1s",
            "--max-retry-delay",
            "2s",
            *destination_args,
        )
        started.append(destination)
        next_hop = destination.port
        if postfix:
            relay = PrivatePostfix(destination.port)
            next_hop = relay.port
        fwd_dir = tmp_path / "forwarder"
        fwd_dir.mkdir()
        (fwd_dir / "rules.yaml").write_text(forwarder_rules)
        env = {"INBOUND_SRS_SECRETS": SRS_SECRETS} if forwarder_env is None else forwarder_env
        forwarder = start_child(
            fwd_dir,
            "--hostname",
            "fwd.chain.test",
            "--dns-zone",
            str(zone),
            "--relay",
            f"127.0.0.1:{next_hop}",
            "--retry-delay",
            "1s",
            "--max-retry-delay",
            "2s",
            *forwarder_args,
            port=forwarder_port,
            env=env,
        )
        started.append(forwarder)
        yield Chain(forwarder, destination, relay, zone, {d.name: d for d in domains})
    finally:
        for child in reversed(started):
            _stop(child)
        if relay is not None:
            relay.stop()
