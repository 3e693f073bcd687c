"""A forwarding chain on loopback for the forward action's tests: a sender (smtplib) → an
`inbound serve` that forwards (`--relay` to the next hop) → an `inbound serve` acting as the
destination MX, which stores each message (local S3) and publishes its verdicts (local SNS).

Every domain involved is answered by one zone file (`--dns-zone`) written by `Zone`: SPF that
lets 127.0.0.1 send for the sender, the forwarder and its SRS domain, DMARC policies, and the
DKIM keys the test signs with. Both servers are real child processes (`start_child`), so a test
can SIGKILL the forwarder and start it again on the same data directory.
"""

from __future__ import annotations

import json
import smtplib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from inbound.message.dkim_sign import SigningKey, parse_key
from tests.integration.receiver import Child, start_child, wait_for

SECRETS = "chain-secret-new,chain-secret-old"
TOPIC = "arn:aws:sns:us-east-1:123456789012:arrived"

DESTINATION_RULES = f"""\
version: 1
name: destination
domains: [dest.example]
rules:
  - name: arrive
    actions:
      - {{type: s3, bucket: mail, prefix: in/}}
      - {{type: sns, topic_arn: "{TOPIC}"}}
"""


def new_key() -> tuple[bytes, SigningKey]:
    """A fresh 2048-bit RSA key: its PEM and the signing key made of it."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem, parse_key(pem, "test key")


@dataclass
class Zone:
    """The one zone file of the chain."""

    lines: list[str] = field(default_factory=list)

    def txt(self, name: str, value: str) -> Zone:
        # ZoneResolver's TXT: quoted strings of at most 255 characters each.
        chunks = [value[i : i + 200] for i in range(0, len(value), 200)]
        self.lines.append(f"{name}  TXT  " + " ".join(f'"{c}"' for c in chunks))
        return self

    def write(self, path: Path) -> Path:
        path.write_text("\n".join(self.lines) + "\n")
        return path


def sign_original(message: bytes, domain: str, key: SigningKey, selector: str = "s1") -> bytes:
    """The sender's own DKIM signature (relaxed/relaxed, From and the usual headers)."""
    signature = dkim.sign(
        message,
        selector.encode(),
        domain.encode(),
        key.private,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    return bytes(signature) + message


def send(port: int, mail_from: str, rcpts: list[str], message: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.sender.example")
        client.sendmail(mail_from, rcpts, message)


@dataclass
class Destination:
    child: Child

    def arrived(self) -> list[tuple[dict[str, Any], bytes]]:
        """(the Received notification, the stored message) of each message that arrived."""
        path = self.child.data_dir / "sns" / "arrived.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            notification = json.loads(json.loads(line)["Message"])
            key = notification["receipt"]["action"]
            stored = self.child.data_dir / "s3" / "mail" / "in" / notification["mail"]["messageId"]
            out.append((notification, stored.read_bytes() if stored.exists() else b""))
            del key
        return out

    def wait(self, count: int) -> list[tuple[dict[str, Any], bytes]]:
        return wait_for(lambda: (a := self.arrived()) if len(a) >= count else None, "arrival")


def verdicts(notification: dict[str, Any]) -> dict[str, str]:
    receipt = notification["receipt"]
    return {
        kind: receipt[f"{kind}Verdict"]["status"] for kind in ("spf", "dkim", "dmarc")
    }


def start_destination(tmp_path: Path, zone: Path, *args: str) -> Destination:
    folder = tmp_path / "destination"
    folder.mkdir()
    (folder / "rules.yaml").write_text(DESTINATION_RULES)
    child = start_child(folder, "--hostname", "dest.test", "--dns-zone", str(zone), *args)
    return Destination(child)


def start_forwarder(
    tmp_path: Path, rules: str, zone: Path, relay_port: int, *args: str, name: str = "forwarder"
) -> Child:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    (folder / "rules.yaml").write_text(rules)
    return start_child(
        folder,
        "--hostname",
        "fwd.test",
        "--dns-zone",
        str(zone),
        "--relay",
        f"127.0.0.1:{relay_port}",
        *args,
    )
