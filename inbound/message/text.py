"""Header field text as the rules see it: unfolded, 8-bit bytes recovered, RFC 2047 decoded.

This module owns turning one raw header value (as the stdlib `email` parser hands it over, with
8-bit bytes as surrogate escapes) into text. It never raises, and every decode is bounded so no
value can make it backtrack or do quadratic work for long.
"""

from __future__ import annotations

import codecs
import re
from email.errors import HeaderParseError
from email.header import decode_header

# decode_header() does quadratic work in the number of encoded words; longer values stay as is.
MAX_DECODE_CHARS = 16 * 1024

# What the stdlib raises on hostile encodings: an unknown charset (LookupError; ValueError if
# it holds a NUL), bytes the charset cannot decode, broken base64 (HeaderParseError), and RFC 2231
# parameters mixing "filename*=" with "filename*0*=" (TypeError).
DECODE_ERRORS = (LookupError, UnicodeError, ValueError, HeaderParseError, TypeError)
_FOLD = re.compile(r"(?:\r\n|\r|\n)[ \t]*")
# The line breaks of str.splitlines() besides CR and LF, on which decode_header() splits too.
_OTHER_BREAKS = dict.fromkeys(map(ord, "\v\f\x1c\x1d\x1e\x85\u2028\u2029"), " ")
# Labels that mail really uses for a superset (as the WHATWG Encoding Standard decodes them).
_SUPERSETS = {"gb2312": "gb18030", "gbk": "gb18030", "shift_jis": "cp932", "euc_kr": "cp949"}


def unfold(value: str) -> str:
    """One line (RFC 5322 §2.2.3, each fold becomes one space), undecodable 8-bit as U+FFFD."""
    try:  # the parser keeps 8-bit bytes as surrogate escapes: recover them, read them as UTF-8
        data = value.encode("utf-8", "surrogateescape")
    except UnicodeError:
        data = value.encode("utf-8", "replace")
    return _FOLD.sub(" ", data.decode("utf-8", "replace").rstrip("\r\n")).lstrip(" \t")


def decode_words(text: str) -> str:
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
            pieces.append(chunk.decode(codec_of(charset) if charset else plain))
    except DECODE_ERRORS:
        return text
    return "".join(pieces) + text[end:]


def codec_of(charset: str) -> str:
    """The codec for a MIME charset label; LookupError when Python has none."""
    name = codecs.lookup(charset.partition("*")[0]).name  # RFC 2231 allows "utf-8*en"
    return _SUPERSETS.get(name, name)
