"""The header edits of a forwarded message (SPEC section 3b, `forward`): pure, bytes in, bytes out.

This module owns what a forward changes in a message: the `rewrite` From mode (From becomes
`"NAME via DOMAIN" <from_address>`, Reply-To kept or set to the original From, `Sender`,
`Return-Path` and every `DKIM-Signature` removed, `X-Original-From` and `X-Original-To`
added), the loop marker `X-Inbound-Forwarded: HOSTNAME` on top, and the loop check that reads
it. Every header field it does not edit keeps its bytes, and the body is never touched, so
`preserve` (nothing but the marker on top) leaves the original DKIM signatures verifying.

Addresses are read and written with the `email` package (`email.headerregistry`: display
names with commas, quotes and RFC 2047 encoded words, bare addresses), never with regular
expressions: a regex rewrite is what breaks on `From: user@example.com` in hand-written
forwarders. No I/O; it never raises on message bytes.
"""

from __future__ import annotations

import email.policy
import itertools
from dataclasses import dataclass
from email.headerregistry import Address, AddressHeader, HeaderRegistry
from email.parser import BytesHeaderParser

from inbound.message.headers import header_fields

# The loop marker: a forward carries the host name of every inbound that forwarded it.
FORWARDED_HEADER = "X-Inbound-Forwarded"
# RFC 5321 §6.3: a message with this many Received headers is looping; Postfix's
# hopcount_limit is 50, 25 is SPEC's (a forward chain is never that long on purpose).
MAX_RECEIVED = 25

# Headers a rewrite removes: the From changed, so no signature over it can verify (and SES
# refuses duplicate DKIM-Signature headers); Sender and Return-Path name the original sender.
_REMOVED = frozenset({"sender", "return-path", "dkim-signature"})

_registry = HeaderRegistry()
# The added headers are address lists too: written (and RFC 2047 encoded) like From.
_registry.map_to_type("x-original-from", AddressHeader)  # type: ignore[arg-type] # a mixin
_registry.map_to_type("x-original-to", AddressHeader)  # type: ignore[arg-type]
# SMTP: CRLF line ends, long lines folded, non-ASCII as RFC 2047 encoded words.
_WRITE = email.policy.SMTP.clone(header_factory=_registry)
_READ = email.policy.default


@dataclass(frozen=True, slots=True)
class OriginalFrom:
    """The From of the message as received: its addresses and the name a rewrite shows."""

    addresses: tuple[Address, ...]

    @property
    def name(self) -> str:
        """The first address's display name, else the address itself (SPEC 3b NAME)."""
        if not self.addresses:
            return ""
        first = self.addresses[0]
        return first.display_name or first.addr_spec


def read_from(raw: bytes) -> OriginalFrom:
    """The From header's addresses (none if it has none that parse)."""
    fields = header_fields(raw)
    block = b"".join(raw[start:end] for start, end, name, _ in fields if name.lower() == "from")
    if not block:
        return OriginalFrom(())
    try:
        header = BytesHeaderParser(policy=_READ).parsebytes(block + b"\r\n")["From"]
        found = tuple(a for a in getattr(header, "addresses", ()) if a.addr_spec)
    except Exception:  # the email package on hostile bytes: treat as no usable From
        return OriginalFrom(())
    return OriginalFrom(tuple(_clean_address(a) for a in found))


def loop_reason(raw: bytes, hostname: str) -> str | None:
    """Why `raw` must not be forwarded again (SPEC 3b loops), or None."""
    received = 0
    me = hostname.strip().lower()
    for _start, _end, name, value in header_fields(raw):
        lowered = name.lower()
        if lowered == "received":
            received += 1
        elif (
            lowered == FORWARDED_HEADER.lower()
            and value.decode("ascii", "replace").strip().lower() == me
        ):
            return f"already forwarded by {hostname} ({FORWARDED_HEADER})"
    if received > MAX_RECEIVED:
        return f"{received} Received headers (more than {MAX_RECEIVED}): a mail loop"
    return None


def mark_forwarded(raw: bytes, hostname: str) -> bytes:
    """`raw` with `X-Inbound-Forwarded: HOSTNAME` on top, and without the `Return-Path` our
    receiver put above its `Received` (RFC 5321 §4.4: the final delivery adds one; a message
    sent on must not carry it, or the destination shows two). A Return-Path of the original
    message, below our trace headers, keeps its bytes."""
    clean = "".join(c if 32 < ord(c) < 127 else "?" for c in hostname) or "localhost"
    fields = header_fields(raw)
    for (start, end, name, _), following in itertools.pairwise(fields):
        if name.lower() == "return-path" and following[2].lower() == "received":
            raw = raw[:start] + raw[end:]
            break
    return f"{FORWARDED_HEADER}: {clean}\r\n".encode("ascii") + raw


def rewrite(raw: bytes, *, from_address: str, recipient: str) -> bytes:
    """The `rewrite` From mode for a message received for `recipient` (module docstring).

    Fields kept keep their bytes and order; From is replaced where it was; the added ones
    (Reply-To when there was none, X-Original-From, X-Original-To) end the header block."""
    fields = header_fields(raw)
    original = read_from(raw)
    domain = recipient.rpartition("@")[2] or recipient
    name = original.name or "unknown sender"
    new_from = Address(display_name=f"{name} via {domain}", addr_spec=from_address)
    has_reply_to = any(name_.lower() == "reply-to" for _, _, name_, _ in fields)
    out: list[bytes] = []
    last = 0
    wrote_from = False
    for start, end, field_name, _value in fields:
        lowered = field_name.lower()
        if lowered in _REMOVED or lowered == "from":
            out.append(raw[last:start])
            last = end
            if lowered == "from" and not wrote_from:  # a second From is dropped (RFC 5322 §3.6)
                out.append(_fold("From", [new_from]))
                wrote_from = True
    block_end = fields[-1][1] if fields else 0
    out.append(raw[last:block_end])
    if not wrote_from:
        out.append(_fold("From", [new_from]))
    if original.addresses:
        if not has_reply_to:
            out.append(_fold("Reply-To", list(original.addresses)))
        out.append(_fold("X-Original-From", list(original.addresses)))
    out.append(_fold("X-Original-To", [_recipient_address(recipient)]))
    if not fields:
        out.append(b"\r\n")  # no header block: the added fields need the empty line after them
    out.append(raw[block_end:])
    return b"".join(out)


def _fold(name: str, addresses: list[Address]) -> bytes:
    header = _WRITE.header_factory(name, ", ".join(str(a) for a in addresses))
    folded: str = header.fold(policy=_WRITE)
    return folded.encode("ascii", "replace")


def _clean_address(address: Address) -> Address:
    """`address` with undecodable bytes of its display name (8-bit headers read with
    surrogate escapes) shown as U+FFFD, so it can be written again."""
    name = address.display_name
    if any("\udc80" <= c <= "\udcff" for c in name):
        name = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    try:
        return Address(display_name=name, username=address.username, domain=address.domain)
    except (ValueError, IndexError):
        return Address(addr_spec=address.addr_spec)


def _recipient_address(recipient: str) -> Address:
    local, _, domain = recipient.rpartition("@")
    try:
        return Address(username=local, domain=domain)
    except (ValueError, IndexError):
        return Address(display_name=recipient)
