"""The arguments of MAIL FROM and RCPT TO: a path (RFC 5321 §4.1.2) and ESMTP parameters.

It owns the receiver's address grammar, parsed once per command with string methods and no
email-header machinery: `Reverse-path` / `Forward-path` in angle brackets (or, tolerated as
today, a bare mailbox), a local part as dot-string or quoted string, a domain or an address
literal, a source route accepted and dropped (RFC 5321 §4.1.1.3, §C), UTF-8 in both parts
(RFC 6531 §3.3). Errors are values (`None`, `ParamError`), never exceptions.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

# RFC 5321 §4.1.2 atext (RFC 5322 §3.2.3): what a dot-string atom may hold, besides letters and
# digits. UTF-8 beyond ASCII is allowed too (RFC 6531 §3.3, `atext =/ UTF8-non-ascii`).
_ATEXT_SPECIALS = frozenset("!#$%&'*+-/=?^_`{|}~")
# RFC 1035 §2.3.4: a label is at most 63 octets, a name at most 255.
_MAX_LABEL = 63
_MAX_DOMAIN = 255


@dataclass(frozen=True, slots=True)
class Path:
    """A parsed path: `address` is "" for the null path `<>`; `params` is what followed it;
    `local_only` when the mailbox is a local part without a domain (only a recipient
    `<Postmaster>` may be one, RFC 5321 §4.1.1.3)."""

    address: str
    params: str
    local_only: bool = False


def parse_path(arg: str) -> Path | None:
    """`<mailbox>`, `<>`, `<@route:mailbox>` or a bare mailbox, then optional parameters after
    a space; None if it does not parse. An empty `arg` gives an empty address and no params."""
    text = arg.lstrip(" ")
    if not text:
        return Path("", "")
    if text[0] == "<":
        close = _closing_bracket(text)
        if close < 0:
            return None
        # Blanks inside the brackets are tolerated, as is a parameter with no space before it.
        inner, rest = text[1:close].strip(" "), text[close + 1 :]
        if inner == "":
            return Path("", rest.strip(" "))
        if inner[0] == "@":
            # A source route (A-d-l ":"): RFC 5321 §4.1.1.3 says to accept and ignore it.
            colon = inner.find(":")
            if colon < 0 or not all(_route_hop(hop) for hop in inner[:colon].split(",")):
                return None
            inner = inner[colon + 1 :]
        return _path(inner, rest)
    # No brackets: a client's bare mailbox, up to the first space.
    bare, _, rest = text.partition(" ")
    if ">" in bare:
        return None
    return _path(bare, rest)


def _path(mailbox: str, rest: str) -> Path | None:
    parts = _mailbox(mailbox)
    if parts is None:
        return None
    local, whole = parts
    params = rest.strip(" ")
    return Path(local, params, local_only=True) if whole is None else Path(whole, params)


def _closing_bracket(text: str) -> int:
    """The index of the ">" that closes the path at text[0], skipping quoted strings."""
    index, quoted = 1, False
    while index < len(text):
        char = text[index]
        if quoted and char == "\\":
            index += 2
            continue
        if char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            return index
        elif char == "<" and not quoted:
            return -1
        index += 1
    return -1


def _route_hop(hop: str) -> bool:
    return hop.startswith("@") and _domain(hop[1:])


def parse_mailbox(text: str) -> str | None:
    """`Local-part "@" ( Domain / address-literal )`, the local part unquoted where quoting is
    not needed (as the mail system compares it); the bare local part "postmaster" too (RFC 5321
    §4.1.1.3). None if it does not parse."""
    parts = _mailbox(text)
    if parts is None:
        return None
    local, mailbox = parts
    return local if mailbox is None else mailbox


def _mailbox(text: str) -> tuple[str, str | None] | None:
    """(the local part, the whole mailbox or None when it has no domain); None if `text` does
    not parse."""
    if text.startswith('"'):
        end = _quoted_end(text)
        if end < 0 or (end < len(text) and text[end] != "@"):
            return None
        plain = _unescaped(text[1 : end - 1])
        # A quoted string that needs no quotes is the same local part (RFC 5321 §4.1.2).
        local = plain if _dot_string(plain) else text[:end]
        domain = text[end + 1 :] if end < len(text) else None
    else:
        at = text.rfind("@")
        local, domain = (text, None) if at < 0 else (text[:at], text[at + 1 :])
        if not _dot_string(local):
            return None
    if domain is None:
        # A local part alone: "Postmaster" must be accepted as a recipient (RFC 5321
        # §4.1.1.3); other recipients are left to the policy to refuse, as the receiver always
        # did, and a sender without a domain is refused by MAIL.
        return local, None
    if not (_domain(domain) or _address_literal(domain)):
        return None
    return local, f"{local}@{domain}"


def _quoted_end(text: str) -> int:
    """Given text[0] == '"': the index just past the closing quote, or -1. RFC 5321 qtextSMTP is
    printable ASCII (and UTF-8) but '"' and '\\'; quoted-pairSMTP a backslash and printable."""
    index = 1
    while index < len(text):
        char = text[index]
        if char == "\\":
            if index + 1 >= len(text) or not (" " <= text[index + 1] <= "~"):
                return -1
            index += 2
            continue
        if char == '"':
            return index + 1
        if char < " " or char == "\x7f" or _surrogate(char):
            return -1
        index += 1
    return -1


def _unescaped(quoted: str) -> str:
    out, index = [], 0
    while index < len(quoted):
        if quoted[index] == "\\":
            index += 1
        out.append(quoted[index])
        index += 1
    return "".join(out)


def _dot_string(text: str) -> bool:
    """RFC 5321 Dot-string (atoms of atext joined by dots), with the obsolete forms still in
    use tolerated (RFC 5322 §4.4): a leading, trailing or doubled dot."""
    if not text or text.strip(".") == "":
        return False
    return all(_atext(c) for c in text.replace(".", ""))


def _atext(char: str) -> bool:
    if char.isascii():
        return char.isalnum() or char in _ATEXT_SPECIALS
    # UTF-8 (RFC 6531 UTF8-non-ascii), but no C1 control; undecodable bytes are not text.
    return char.isprintable() and not _surrogate(char)


def _surrogate(char: str) -> bool:
    return "\ud800" <= char <= "\udfff"


def _domain(text: str) -> bool:
    """RFC 5321 Domain: sub-domains of letters, digits and hyphens joined by dots, U-labels
    allowed (RFC 6531 §3.3), RFC 1035's lengths; the underscores and edge hyphens of real
    host names tolerated."""
    if not text or len(text.encode("utf-8", "surrogatepass")) > _MAX_DOMAIN:
        return False
    for label in text.split("."):
        if not label:
            return False
        if len(label.encode("utf-8", "surrogatepass")) > _MAX_LABEL:
            return False
        for char in label:
            if char.isascii():
                if not (char.isalnum() or char in "-_"):
                    return False
            elif _surrogate(char) or not char.isprintable():
                return False
    return True


def _address_literal(text: str) -> bool:
    """RFC 5321 §4.1.3: `[IPv4]`, `[IPv6:...]`, or a general literal `[tag:content]`."""
    if len(text) < 3 or text[0] != "[" or text[-1] != "]":
        return False
    inner = text[1:-1]
    if inner[:5].upper() == "IPV6:":
        try:
            ipaddress.IPv6Address(inner[5:])
        except ValueError:
            return False
        return True
    tag, colon, content = inner.partition(":")
    if colon:
        # General-address-literal: Standardized-tag ":" 1*dcontent (printable, not [ \ ]).
        return (
            _domain(tag)
            and bool(content)
            and all("!" <= c <= "~" and c not in "[\\]" for c in content)
        )
    try:
        ipaddress.IPv4Address(inner)
    except ValueError:
        return False
    return True


# -- ESMTP parameters (RFC 5321 §4.1.2 Mail-parameters) -----------------------------------------


class ParamError(enum.Enum):
    """Why MAIL's parameters were refused; the session maps each to its reply."""

    SYNTAX = "syntax"  # not esmtp-keyword["=" esmtp-value], or a SIZE that is not a number
    BODY = "body"  # BODY other than 7BIT or 8BITMIME (RFC 6152)
    SMTPUTF8_VALUE = "smtputf8 value"  # RFC 6531 §3.4: SMTPUTF8 takes no value
    TOO_BIG = "too big"  # SIZE over the limit (RFC 1870 §6.2)
    UNKNOWN = "unknown"  # a keyword this server does not implement (RFC 5321 §4.1.1.11)


@dataclass(frozen=True, slots=True)
class MailParams:
    size: int | None = None
    body: str = "7BIT"
    smtputf8: bool = False


def parse_params(text: str) -> dict[str, str | bool] | None:
    """`KEY[=VALUE] ...`, upper-cased; None if a keyword is not alphanumeric or "=" has no
    value (the rule the receiver applied to MAIL and RCPT parameters so far)."""
    result: dict[str, str | bool] = {}
    for param in text.upper().split():
        key, eq, value = param.partition("=")
        if not key.isalnum() or (eq and not value):
            return None
        result[key] = value if eq else True
    return result


def mail_params(text: str, max_size: int) -> MailParams | ParamError:
    """MAIL FROM's parameters: SIZE (RFC 1870), BODY (RFC 6152), SMTPUTF8 (RFC 6531)."""
    params = parse_params(text)
    if params is None:
        return ParamError.SYNTAX
    body = params.pop("BODY", "7BIT")
    if body not in ("7BIT", "8BITMIME"):
        return ParamError.BODY
    smtputf8 = params.pop("SMTPUTF8", False)
    if not isinstance(smtputf8, bool):
        return ParamError.SMTPUTF8_VALUE
    size = params.pop("SIZE", None)
    declared: int | None = None
    if size:
        if isinstance(size, bool) or not (size.isascii() and size.isdigit()):
            return ParamError.SYNTAX
        declared = int(size)
        if max_size and declared > max_size:
            return ParamError.TOO_BIG
    if params:
        return ParamError.UNKNOWN
    return MailParams(declared, str(body), smtputf8)
