"""A message read whole for the `parsed` webhook payload (SPEC section 3b): `parse_for_webhook`.

This module owns reading every part of a message, bodies included: the top header block
decoded (RFC 2047, charsets), the address fields parsed, the text/plain and text/html parts
that are not attachments decoded to text, and every other part kept as an attachment with its
decoded bytes. Parts are found by the same bounded walk the rules use
(`inbound.message.mime`, `MimeLimits`, linear time), so the payload's attachments are the ones
the rules saw; bodies are sliced out of the message's bytes, never copied whole.

A part that cannot be decoded (broken base64, an unknown transfer encoding or charset, bytes
its charset does not allow) never fails the whole: it becomes an attachment holding its body
as received, with `error` saying what is wrong. The bytes a `MimeLimits` limit left unread are
one more such part. Pure: no I/O, never raises on message bytes.
"""

from __future__ import annotations

import binascii
import hashlib
import io
import re
from dataclasses import dataclass
from email.message import Message
from email.utils import parsedate_to_datetime

from inbound.core.message import Header, MimeLimits
from inbound.message.mime import PartSpan, attachment_of, bounded_fields, walk_mime
from inbound.message.parse import mailboxes
from inbound.message.text import DECODE_ERRORS, codec_of, decode_words, unfold

# Codecs Python has that no mail charset is: they read escapes (and can make lone surrogates)
# or take quadratic time (punycode), so a part naming one is broken, not decoded.
_NOT_CHARSETS = frozenset({"punycode", "idna", "unicode_escape", "raw_unicode_escape"})
_MSG_ID = re.compile(r"<[^<>]*>")
_MIME_TYPE = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+/[a-z0-9!#$%&'*+.^_`|~-]+")
_TRAILING_EOL = re.compile(rb"(?:\r\n|\r|\n)\Z")
_IDENTITY = ("", "7bit", "8bit", "binary")
# How much of a hostile value an error message quotes.
_QUOTED = 40


class PartError(Exception):
    """Why a part's body could not be decoded; its text is the payload's `error`."""


@dataclass(frozen=True, slots=True)
class Mailbox:
    # The display name, decoded; None when there is none.
    name: str | None
    address: str


@dataclass(frozen=True, slots=True)
class ParsedAttachment:
    filename: str | None
    content_type: str
    # The Content-ID without its angle brackets: what a `cid:` URL names (RFC 2392).
    content_id: str | None
    # Decoded (Content-Transfer-Encoding undone); the body as received when `error` is set.
    content: bytes
    sha256: str
    # Why the part is sent as received; None for a part decoded as declared.
    error: str | None = None

    @property
    def size(self) -> int:
        return len(self.content)


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    headers: tuple[Header, ...]
    from_: Mailbox | None
    to: tuple[Mailbox, ...]
    cc: tuple[Mailbox, ...]
    reply_to: tuple[Mailbox, ...]
    subject: str | None
    # ISO 8601 (with the header's UTC offset) when the Date header parses; else None.
    date: str | None
    message_id: str | None
    in_reply_to: str | None
    references: tuple[str, ...]
    # Every text/plain (text/html) part that is not an attachment, in order, joined.
    text: str | None
    html: str | None
    attachments: tuple[ParsedAttachment, ...]

    @property
    def broken(self) -> int:
        """How many parts are sent as received because they could not be decoded."""
        return sum(1 for attachment in self.attachments if attachment.error is not None)


def parse_for_webhook(content: bytes, *, limits: MimeLimits) -> ParsedMessage:
    """Everything the `parsed` payload says about `content`; never raises on its bytes."""
    walk = walk_mime(io.BytesIO(content), limits, spans=True)
    headers = tuple(_header(name, value) for name, value in walk.root.raw_items())
    view = memoryview(content)
    texts: list[str] = []
    htmls: list[str] = []
    attachments: list[ParsedAttachment] = []
    for span in walk.spans:
        if span.nested:  # inside a message/* part, which is sent whole
            continue
        body = _body(view, span)
        if span.part.get_content_maintype() == "multipart" and not bytes(body).strip():
            continue  # a multipart without parts, and nothing in it either
        text_kind = _text_kind(span)
        try:
            if text_kind is not None:
                (texts if text_kind == "plain" else htmls).append(_text(body, span.part))
            else:
                attachments.append(_attachment(span.part, _transfer_decoded(body, span.part)))
        except PartError as error:
            attachments.append(_attachment(span.part, bytes(body), str(error)))
    if walk.limit is not None:
        rest = bytes(view[len(content) if walk.unread_from is None else walk.unread_from :])
        why = f"{walk.limit}: the rest of the message, as received"
        attachments.append(_blob(None, "application/octet-stream", None, rest, why))
    return ParsedMessage(
        headers=headers,
        from_=next(iter(_mailboxes(headers, "from")), None),
        to=_mailboxes(headers, "to"),
        cc=_mailboxes(headers, "cc"),
        reply_to=_mailboxes(headers, "reply-to"),
        subject=_first(headers, "subject"),
        date=_date(headers),
        message_id=_first(headers, "message-id"),
        in_reply_to=_first(headers, "in-reply-to"),
        references=tuple(_MSG_ID.findall(_first(headers, "references") or "")),
        text=_joined(texts),
        html=_joined(htmls),
        attachments=tuple(attachments),
    )


# -- headers -----------------------------------------------------------------------------


def _header(name: str, value: str) -> Header:
    text = unfold(value)
    return Header(name=clean(name), value=text, decoded=clean(decode_words(text)))


def _named(headers: tuple[Header, ...], name: str) -> list[Header]:
    return [header for header in headers if header.name.lower() == name]


def _first(headers: tuple[Header, ...], name: str) -> str | None:
    found = _named(headers, name)
    return (found[0].decoded.strip() or None) if found else None


def _mailboxes(headers: tuple[Header, ...], name: str) -> tuple[Mailbox, ...]:
    # Parsed undecoded: a decoded display name may hold commas, "<" or "@" (RFC 2047 §5).
    return tuple(
        Mailbox(name=clean(decode_words(display)) or None, address=clean(address))
        for header in _named(headers, name)
        for display, address in mailboxes(header.value)
    )


def _date(headers: tuple[Header, ...]) -> str | None:
    value = _first(headers, "date")
    if value is None:
        return None
    try:
        return parsedate_to_datetime(value).isoformat()
    except (ValueError, TypeError, IndexError, OverflowError):
        return None


def clean(text: str) -> str:
    """`text` without lone surrogates (a hostile charset can decode to them), which no UTF-8
    JSON can carry."""
    if text.isascii():
        return text
    return text.encode("utf-8", "replace").decode("utf-8")


# -- parts -------------------------------------------------------------------------------


def _body(view: memoryview, span: PartSpan) -> memoryview:
    body = view[span.start : span.end]
    if span.at_boundary:  # the line break before a delimiter is the delimiter's (RFC 2046)
        found = _TRAILING_EOL.search(body[-2:].tobytes())
        if found is not None:
            body = body[: len(body) - len(found.group())]
    return body


def _content_type(part: Message) -> str:
    content_type = part.get_content_type()
    return content_type if _MIME_TYPE.fullmatch(content_type) else "application/octet-stream"


def _text_kind(span: PartSpan) -> str | None:
    """ "plain" or "html" for a body part of the message's text; None for an attachment."""
    if span.whole or attachment_of(span.part) is not None:
        return None
    content_type = span.part.get_content_type()
    if content_type in ("text/plain", "text/html"):
        return content_type[5:]
    return None


def _attachment(part: Message, content: bytes, error: str | None = None) -> ParsedAttachment:
    found = attachment_of(part)
    filename = clean(found.filename) if found is not None and found.filename else None
    content_type = found.content_type if found is not None else _content_type(part)
    if part.get_content_maintype() == "multipart" and error is None:
        error = "a multipart without parts"  # its body is what the walk could not split
    content_id = _msg_id(part.get("content-id"))
    return _blob(filename, content_type, content_id, content, error)


def _blob(
    filename: str | None,
    content_type: str,
    content_id: str | None,
    content: bytes,
    error: str | None,
) -> ParsedAttachment:
    sha256 = hashlib.sha256(content).hexdigest()
    return ParsedAttachment(filename, content_type, content_id, content, sha256, error)


def _msg_id(value: object) -> str | None:
    if value is None:
        return None
    text = clean(unfold(str(value))).strip()
    return text.removeprefix("<").removesuffix(">").strip() or None


def _transfer_decoded(body: memoryview, part: Message) -> bytes:
    """The body with its Content-Transfer-Encoding undone (RFC 2045 §6)."""
    encoding = unfold(str(part.get("content-transfer-encoding", ""))).strip().lower()
    if encoding in _IDENTITY:
        return bytes(body)
    if encoding == "base64":
        try:  # characters outside the alphabet (line breaks) are ignored, as RFC 2045 §6.8 says
            return binascii.a2b_base64(body)
        except binascii.Error:
            pass
        try:  # missing padding loses nothing (as the stdlib and mail readers decode it)
            return binascii.a2b_base64(bytes(body) + b"==")
        except binascii.Error as error:
            raise PartError(f"invalid base64: {error}") from None
    if encoding == "quoted-printable":
        return binascii.a2b_qp(body)
    raise PartError(f"unknown Content-Transfer-Encoding {encoding[:_QUOTED]!r}")


def _text(body: memoryview, part: Message) -> str:
    """A text part as text: its charset (RFC 2046 §4.1.2) decoded strictly."""
    data = _transfer_decoded(body, part)
    try:
        charset = clean(bounded_fields(part).get_content_charset() or "").strip()
    except DECODE_ERRORS:
        charset = ""
    if charset in ("", "us-ascii", "ascii"):
        # Undeclared 8-bit text: UTF-8 when it is that (RFC 6532), else what Windows wrote.
        for fallback in ("utf-8", "cp1252"):
            try:
                return data.decode(fallback)
            except UnicodeDecodeError:
                pass
        return data.decode("latin-1")
    try:
        name = codec_of(charset)
    except DECODE_ERRORS:
        name = ""
    if not name or name in _NOT_CHARSETS:
        raise PartError(f"unknown charset {charset[:_QUOTED]!r}")
    try:
        text = data.decode(name)
    except UnicodeDecodeError as error:
        raise PartError(f"not valid {charset[:_QUOTED]}: byte {error.start}") from None
    except DECODE_ERRORS:  # a codec that is not a text encoding (LookupError)
        raise PartError(f"unknown charset {charset[:_QUOTED]!r}") from None
    if not text.isascii() and clean(text) != text:
        raise PartError(f"not valid {charset[:_QUOTED]}: lone surrogates")
    return text


def _joined(pieces: list[str]) -> str | None:
    """The parts in order, each ending in a line break before the next one starts."""
    if not pieces:
        return None
    joined: list[str] = []
    for piece in pieces:
        if joined and not joined[-1].endswith(("\n", "\r")):
            joined.append("\n")
        joined.append(piece)
    return "".join(joined)
