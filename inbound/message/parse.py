"""Raw message bytes -> `MessageFacts`: headers, From/To/Cc addr-specs, Subject, attachments.

This module owns reading untrusted mail with the stdlib `email` package (compat32 policy). It
never raises: malformed or hostile input yields whatever facts survive, with every part walk and
RFC 2047 decode bounded so that no message can make it loop, recurse or backtrack for long.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from email.errors import HeaderParseError
from email.header import decode_header
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from email.utils import getaddresses

from inbound.core.message import Attachment, Header, MessageFacts

MAX_PARTS = 1_000
MAX_DEPTH = 50
# decode_header() does quadratic work in the number of encoded words; longer values stay as is.
MAX_DECODE_CHARS = 16 * 1024
# The stdlib reads MIME parameters in time quadratic in a field's length and its ";" count, so
# only this much of a Content-Type or Content-Disposition is read for parameters.
MAX_PARAMS_CHARS = 4 * 1024
MAX_PARAMS = 50

# What the stdlib raises on hostile encodings: an unknown charset (LookupError; ValueError if
# it holds a NUL), bytes the charset cannot decode, broken base64 (HeaderParseError), and RFC 2231
# parameters mixing "filename*=" with "filename*0*=" (TypeError).
_DECODE_ERRORS = (LookupError, UnicodeError, ValueError, HeaderParseError, TypeError)
# getaddresses() recurses per nested "(" comment and per ":" (a group), so a long list of
# encoded words holding times overflows; the others guard its hand-written index arithmetic.
_ADDRESS_ERRORS = (RecursionError, IndexError, ValueError)
_FOLD = re.compile(r"(?:\r\n|\r|\n)[ \t]*")
# The line breaks of str.splitlines() besides CR and LF, on which decode_header() splits too.
_OTHER_BREAKS = dict.fromkeys(map(ord, "\v\f\x1c\x1d\x1e\x85\u2028\u2029"), " ")
# Labels that mail really uses for a superset (as the WHATWG Encoding Standard decodes them).
_SUPERSETS = {"gb2312": "gb18030", "gbk": "gb18030", "shift_jis": "cp932", "euc_kr": "cp949"}
_NAME = r"[a-z0-9!#$%&'*+.^_`|~-]+"  # RFC 2045 token characters, lower-cased
_MIME_TYPE = re.compile(rf"{_NAME}/{_NAME}")
# One entry of an address list: up to a comma outside quotes, comments and angle brackets.
_ENTRY = re.compile(r'(?:"(?:[^"\\]|\\.)*"?|\([^()]*\)?|<[^<>]*>?|[^",(<])+')
_ANGLE_ADDR = re.compile(r"<[^<>]*>")


def parse_message(raw: bytes) -> MessageFacts:
    """Every fact the rules may ask about `raw`; never raises, whatever the bytes."""
    defects: set[str] = set()
    try:
        root = BytesParser(policy=compat32).parsebytes(raw)
    except RecursionError as exc:  # thousands of nested multiparts: keep the headers at least
        root = BytesParser(policy=compat32).parsebytes(raw, headersonly=True)
        defects.add(type(exc).__name__)
    headers = tuple(_header(name, value) for name, value in root.raw_items())
    attachments = []
    for part in _walk(root):
        defects.update(type(defect).__name__ for defect in part.defects)
        attachment = _attachment(part)
        if attachment is not None:
            attachments.append(attachment)
    subjects = _named(headers, "subject")
    return MessageFacts(
        size=len(raw),
        headers=headers,
        from_addresses=_addresses(headers, "from"),
        to_addresses=_addresses(headers, "to"),
        cc_addresses=_addresses(headers, "cc"),
        subject=subjects[0].decoded if subjects else None,
        attachments=tuple(attachments),
        defects=tuple(sorted(defects)),
    )


def _header(name: str, value: str) -> Header:
    text = _unfold(value)
    return Header(name=name, value=text, decoded=_decode(text))


def _unfold(value: str) -> str:
    """One line (RFC 5322 §2.2.3, each fold becomes one space), undecodable 8-bit as U+FFFD."""
    try:  # the parser keeps 8-bit bytes as surrogate escapes: recover them, read them as UTF-8
        data = value.encode("utf-8", "surrogateescape")
    except UnicodeError:
        data = value.encode("utf-8", "replace")
    return _FOLD.sub(" ", data.decode("utf-8", "replace").rstrip("\r\n")).lstrip(" \t")


def _decode(text: str) -> str:
    """RFC 2047 encoded words decoded; `text` itself when it has none, is too long or is broken."""
    end = text.rfind("?=") + 2
    if end < 2 or "=?" not in text or len(text) > MAX_DECODE_CHARS:
        return text
    # No encoded word ends after the last "?=", so leaving that tail out costs nothing and keeps
    # decode_header() linear: its regex rescans to the end of the line from each unclosed "=?".
    head = text[:end].translate(_OTHER_BREAKS)
    # decode_header() hands back plain runs as raw-unicode-escape bytes, which make_header()
    # would read as ASCII and so mangle non-ASCII text around encoded words; join them here.
    plain = "ascii" if head.isascii() else "raw-unicode-escape"
    pieces = []
    try:
        for chunk, charset in decode_header(head):
            if isinstance(chunk, str):  # no encoded word after all
                return text
            pieces.append(chunk.decode(_codec(charset) if charset else plain))
    except _DECODE_ERRORS:
        return text
    return "".join(pieces) + text[end:]


def _codec(charset: str) -> str:
    """The codec for a MIME charset label; LookupError when Python has none."""
    name = codecs.lookup(charset.partition("*")[0]).name  # RFC 2231 allows "utf-8*en"
    return _SUPERSETS.get(name, name)


def _named(headers: tuple[Header, ...], name: str) -> list[Header]:
    return [header for header in headers if header.name.lower() == name]


def _addresses(headers: tuple[Header, ...], name: str) -> tuple[str, ...]:
    # The undecoded value: a decoded display name may hold commas, "<" or "@".
    return tuple(spec for header in _named(headers, name) for spec in _addr_specs(header.value))


def _addr_specs(value: str) -> list[str]:
    specs: list[str] = []
    for entry in _ENTRY.findall(value):
        found = _getaddresses(entry)
        if found is None or len(found) > 1 or any(_cut(spec) for spec in found):
            # Not RFC 5322: "a@x b@y" (no comma), a flood the parser gives up on, or a display
            # name that is itself an address, as in the phishing classic "ceo@bank.example
            # <x@evil.example>". The address is what is in angle brackets, as mail readers show
            # it; without any, each word holding an "@".
            words = _ANGLE_ADDR.findall(entry) or [w for w in entry.split() if "@" in w]
            found = [spec for word in words for spec in _getaddresses(word) or ()]
        specs.extend(spec for spec in found if spec and not _cut(spec))
    return specs


def _getaddresses(value: str) -> list[str] | None:
    try:
        return [addr.strip() for _, addr in getaddresses([value])]
    except _ADDRESS_ERRORS:
        return None


def _cut(spec: str) -> bool:
    """Half an address, as getaddresses() leaves of "x@y z@y": "@y"."""
    return spec.startswith("@") or spec.endswith("@")


def _walk(root: Message) -> Iterator[Message]:
    """Each part depth-first in document order, at most MAX_PARTS parts and MAX_DEPTH levels."""
    stack = [(root, 0)]
    for _ in range(MAX_PARTS):
        if not stack:
            return
        part, depth = stack.pop()
        yield part
        # Children of multipart/* and message/* (a list in compat32). Asked only of those:
        # get_payload() of a leaf may decode its body with whatever charset it names.
        payload = part.get_payload() if depth < MAX_DEPTH and part.is_multipart() else None
        if isinstance(payload, list):
            children = [child for child in payload[:MAX_PARTS] if isinstance(child, Message)]
            stack.extend((child, depth + 1) for child in reversed(children))


def _attachment(part: Message) -> Attachment | None:
    """An `Attachment` for a leaf part with a filename or `Content-Disposition: attachment`."""
    if part.is_multipart():
        return None
    # Parameters are read from a copy of the unfolded UTF-8 fields, so a raw 8-bit filename
    # survives; the stdlib undoes RFC 2231 (filename*=utf-8''...) and continuations.
    fields = Message()
    for name in ("Content-Type", "Content-Disposition"):
        value = _first(part, name)
        if value is not None:
            fields[name] = ";".join(value[:MAX_PARAMS_CHARS].split(";", MAX_PARAMS)[:MAX_PARAMS])
    try:
        filename = _decode(fields.get_filename() or "") or None
    except _DECODE_ERRORS:
        filename = None
    if filename is None and fields.get_content_disposition() != "attachment":
        return None
    content_type = (fields.get("Content-Type") or "").partition(";")[0].strip().lower()
    if not _MIME_TYPE.fullmatch(content_type):
        content_type = "application/octet-stream" if filename else part.get_default_type()
    return Attachment(filename=filename, content_type=content_type)


def _first(part: Message, name: str) -> str | None:
    wanted = name.lower()
    for key, value in part.raw_items():
        if key.lower() == wanted:
            return _unfold(value)
    return None
