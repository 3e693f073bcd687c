"""Raw message bytes -> `MessageFacts`: headers, From/To/Cc addr-specs, Subject, attachments.

This module owns reading untrusted mail into facts with the stdlib `email` package (compat32
policy). It never raises on message bytes: malformed or hostile input yields whatever facts
survive. The parts are found by the streaming walk of `inbound.message.mime`, which holds no
body in memory and stops at `MimeLimits`; the facts then say so (`mime_limit`).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from email.utils import getaddresses
from typing import BinaryIO

from inbound.core.message import Header, MessageFacts, MimeLimits
from inbound.message.mime import walk_mime
from inbound.message.text import decode_words, unfold

# Header blocks up to this size may take the fast path of `from_addresses`.
MAX_SIMPLE_BYTES = 64 * 1024

# getaddresses() recurses per nested "(" comment and per ":" (a group), so a long list of
# encoded words holding times overflows; the others guard its hand-written index arithmetic.
_ADDRESS_ERRORS = (RecursionError, IndexError, ValueError)
# One entry of an address list: up to a comma outside quotes, comments and angle brackets.
_ENTRY = re.compile(r'(?:"(?:[^"\\]|\\.)*"?|\([^()]*\)?|<[^<>]*>?|[^",(<])+')
_ANGLE_ADDR = re.compile(r"<[^<>]*>")
# A header block `from_addresses` reads without the `email` parser: ASCII lines ending in CRLF,
# each a field with a name (never the mbox "From " line) or a fold of the one above, and
# nothing the parser would read otherwise (RFC 5322 §2.2, §3.6). Each line starts with a
# character only one branch takes, so matching is linear.
_SIMPLE_FIELDS = re.compile(
    rb"(?:[\x21-\x39\x3b-\x7e]+:[\x20-\x7e\t]*\r\n(?:[ \t][\x20-\x7e\t]*\r\n)*)*(?:\r\n)?"
)
_FROM_FIELD = re.compile(rb"^from:[ \t]*((?:.*\r\n)(?:[ \t].*\r\n)*)", re.IGNORECASE | re.MULTILINE)


def parse_message(raw: bytes, limits: MimeLimits | None = None) -> MessageFacts:
    """Every fact the rules may ask about `raw`; never raises, whatever the bytes."""
    return facts_from(io.BytesIO(raw), len(raw), limits or MimeLimits())


def from_addresses(header: bytes) -> tuple[str, ...]:
    """The From addr-specs of a header block (with or without the empty line ending it), as
    `parse_message(header).from_addresses` has them; what DMARC needs, for less than the
    whole parse when the block is plain (`_SIMPLE_FIELDS`), and by the whole parse otherwise."""
    if len(header) > MAX_SIMPLE_BYTES or not _SIMPLE_FIELDS.fullmatch(header):
        return parse_message(header).from_addresses
    return tuple(
        spec
        for field in _FROM_FIELD.finditer(header)
        for spec in _addr_specs(unfold(field.group(1).decode("ascii")))
    )


def parse_headers(raw: bytes) -> MessageFacts:
    """The facts of `raw`'s header block only (no attachments): what a notification shows."""
    return facts_from(io.BytesIO(raw), len(raw), MimeLimits(), headers_only=True)


def facts_from(
    stream: BinaryIO,
    size: int,
    limits: MimeLimits,
    *,
    headers_only: bool = False,
    stop: Callable[[], bool] | None = None,
) -> MessageFacts:
    """The facts of the message in `stream` (`size` bytes), read once from start to end, or
    only its header block; raises only what `stream` raises, and `WalkCancelled`."""
    walk = walk_mime(stream, limits, headers_only=headers_only, stop=stop)
    headers = tuple(_header(name, value) for name, value in walk.root.raw_items())
    subjects = _named(headers, "subject")
    return MessageFacts(
        size=size,
        headers=headers,
        from_addresses=_addresses(headers, "from"),
        to_addresses=_addresses(headers, "to"),
        cc_addresses=_addresses(headers, "cc"),
        subject=subjects[0].decoded if subjects else None,
        attachments=tuple(walk.attachments),
        defects=tuple(sorted(walk.defects)),
        mime_limit=walk.limit,
    )


def _header(name: str, value: str) -> Header:
    text = unfold(value)
    return Header(name=name, value=text, decoded=decode_words(text))


def _named(headers: tuple[Header, ...], name: str) -> list[Header]:
    return [header for header in headers if header.name.lower() == name]


def _addresses(headers: tuple[Header, ...], name: str) -> tuple[str, ...]:
    # The undecoded value: a decoded display name may hold commas, "<" or "@".
    return tuple(spec for header in _named(headers, name) for spec in _addr_specs(header.value))


def _addr_specs(value: str) -> list[str]:
    return [spec for _, spec in mailboxes(value)]


def mailboxes(value: str) -> list[tuple[str, str]]:
    """(display name, addr-spec) of each address in an address-list field's unfolded value,
    the name as written (RFC 2047 words not decoded, "" when none); never raises."""
    pairs: list[tuple[str, str]] = []
    for entry in _ENTRY.findall(value):
        found = _getaddresses(entry)
        if found is None or len(found) > 1 or any(_cut(spec) for _, spec in found):
            # Not RFC 5322: "a@x b@y" (no comma), a flood the parser gives up on, or a display
            # name that is itself an address, as in the phishing classic "ceo@bank.example
            # <x@evil.example>". The address is what is in angle brackets, as mail readers show
            # it, and the name what is before them; without any, each word holding an "@".
            angles = _ANGLE_ADDR.findall(entry)
            name = entry.partition("<")[0].strip(' \t"') if len(angles) == 1 else ""
            words = angles or [w for w in entry.split() if "@" in w]
            found = [(name, spec) for word in words for _, spec in _getaddresses(word) or ()]
        pairs.extend((name, spec) for name, spec in found if spec and not _cut(spec))
    return pairs


def _getaddresses(value: str) -> list[tuple[str, str]] | None:
    try:
        return [(name, addr.strip()) for name, addr in getaddresses([value])]
    except _ADDRESS_ERRORS:
        return None


def _cut(spec: str) -> bool:
    """Half an address, as getaddresses() leaves of "x@y z@y": "@y"."""
    return spec.startswith("@") or spec.endswith("@")
