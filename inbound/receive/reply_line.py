"""The wire form of a reply line: enhanced status codes added, client bytes made harmless.

Some replies are written without RFC 3463 codes, and some echo what the client sent
(an unknown command, a VRFY argument); these functions make every such line well-formed.
"""

from __future__ import annotations

import re

_ENHANCED = re.compile(r"^\d{3}[ -]\d\.\d{1,3}\.\d{1,3}( |$)")
# RFC 3463 codes for the reply lines written without one.
_DEFAULT_STATUS = {
    "221": "2.0.0", "250": "2.0.0", "220": "2.0.0", "251": "2.1.5", "252": "2.5.0",
    "421": "4.4.2", "451": "4.3.0", "452": "4.5.3", "454": "4.7.0",
    "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4",
    "530": "5.7.0", "535": "5.7.8", "550": "5.0.0", "552": "5.3.4", "553": "5.1.3",
    "554": "5.0.0", "555": "5.5.4",
}  # fmt: skip
# Never in a reply line: a bare CR or LF would split the reply (and other control characters
# reach terminals and logs), undecodable bytes (surrogates) cannot be sent, and anything beyond
# ASCII is a client's text echoed back (replies are ASCII: RFC 5321 §4.2, RFC 6531 §3.7.4).
_UNSAFE = re.compile("[^\x20-\x7e]")
# RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets, CRLF included.
MAX_REPLY_LINE = 510


def with_status(line: str) -> str:
    """Add an RFC 3463 enhanced status code to a reply line that has none."""
    if len(line) < 4 or not line[:3].isdigit() or _ENHANCED.match(line):
        return line
    status = _DEFAULT_STATUS.get(line[:3])
    if status is None:
        return line
    return f"{line[:4]}{status} {line[4:]}"


def sanitized(line: str) -> str:
    """`line` with every character a client could have had echoed into it that is not
    printable ASCII (control characters, undecodable bytes, UTF-8) replaced by "?"."""
    return _UNSAFE.sub("?", line)


def bounded(line: str) -> str:
    """`line` cut to the longest reply line RFC 5321 allows (an echoed 500-octet command would
    make it longer), the cut marked with "..."."""
    if len(line) <= MAX_REPLY_LINE:
        return line
    return line[: MAX_REPLY_LINE - 3] + "..."
