"""The trace and verdict headers the receiver prepends to a message (SPEC section 5).

This module owns rewriting raw message bytes: it strips forged verdict and
Authentication-Results headers, prepends ours, and leaves every other byte as it was.
Pure: no I/O, no clock (the time comes in as an argument); it never raises on message bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime
from ipaddress import IPv4Address, IPv6Address, ip_address

from inbound.core.verdicts import Verdicts

# Header values never carry a line break: C0 controls, DEL, and the Unicode line breaks a
# str.splitlines() reader would honour become "?" (no header injection through HELO or MAIL FROM).
_CONTROLS = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")
# RFC 5322 §3.6.8 field name (ftext), allowing the obsolete space before the colon (§4.5).
_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:")
_FORGED_NAME = re.compile(r"x-ses-[a-z0-9-]*-verdict", re.IGNORECASE)
_COMMENT = re.compile(r"\([^()]*\)")
# RFC 8601 §2.2 pvalue without quoting: a token, or an address of dot-atom text and a domain.
_PLAIN_PVALUE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+(?:@[A-Za-z0-9.-]+)?")


@dataclass(frozen=True, slots=True)
class DkimResult:
    """One DKIM signature's result (RFC 8601 §2.7.1): `pass`, `fail`, `permerror`, ..."""

    result: str
    domain: str
    selector: str = ""


@dataclass(frozen=True, slots=True)
class AuthDetails:
    """SPF, DKIM and DMARC results in RFC 8601 words; the default means "not checked"."""

    spf: str = "none"
    spf_explanation: str = "SPF not checked"
    dkim: tuple[DkimResult, ...] = field(default=())
    dmarc: str = "none"
    # The RFC5322.From domain DMARC was evaluated for; "" when unknown.
    from_domain: str = ""
    # The DMARC policy that domain publishes (none|quarantine|reject, sp= applied), whatever
    # the result; "" when no record was found. Not written in any header.
    dmarc_policy: str = ""


@dataclass(frozen=True, slots=True)
class ReceivedFacts:
    """What the receiver knows about one message when it prepends its headers."""

    message_id: str
    hostname: str
    # The reverse path without angle brackets; "" is the null sender <>.
    mail_from: str
    rcpt_tos: tuple[str, ...]
    helo: str
    client_ip: IPv4Address | IPv6Address | str
    rdns: str | None
    tls: bool
    received_at: datetime
    verdicts: Verdicts = field(default_factory=Verdicts)
    auth: AuthDetails = field(default_factory=AuthDetails)


def prepend_headers(raw: bytes, received: ReceivedFacts) -> bytes:
    """`raw` without forged headers, under Return-Path ... Authentication-Results (CRLF)."""
    lines = [f"{name}: {value}\r\n" for name, value in received_headers(received)]
    # "replace": a surrogate-escaped byte from the SMTP session becomes "?" instead of raising.
    top = "".join(lines).encode("utf-8", "replace")
    return top + strip_forged_headers(raw, received.hostname)


def add_header(raw: bytes, name: str, value: str) -> bytes:
    """The add_header action: `Name: value` on top of `raw`; a bad name is a ValueError."""
    if not re.fullmatch(r"[!-9;-~]+", name):
        raise ValueError(f"{name!r} is not a header field name (RFC 5322 §3.6.8)")
    return f"{name}: {_clean(value)}\r\n".encode("utf-8", "replace") + raw


def received_headers(received: ReceivedFacts) -> list[tuple[str, str]]:
    """Our headers as (name, value) pairs, in the order they go on top of the message."""
    hostname = _clean(received.hostname)
    helo = _clean(received.helo)
    mail_from = _clean(received.mail_from)
    ip = _clean(str(received.client_ip))
    verdicts = received.verdicts
    return [
        ("Return-Path", f"<{mail_from}>"),
        ("Received", _received(received, hostname, helo, ip)),
        ("X-SES-Spam-Verdict", verdicts.spam.value),
        ("X-SES-Virus-Verdict", verdicts.virus.value),
        ("Received-SPF", _received_spf(received.auth, hostname, helo, mail_from, ip)),
        (
            "Authentication-Results",
            _authentication_results(received.auth, hostname, helo, mail_from),
        ),
    ]


def strip_forged_headers(raw: bytes, hostname: str) -> bytes:
    """`raw` without incoming X-SES-*-Verdict headers and Authentication-Results naming us.

    The header block ends at the first empty line (CRLF or LF) or the first line that is
    neither a field nor a continuation; everything kept stays byte-identical.
    """
    fields = _fields(raw)
    if not fields:
        return raw
    kept: list[bytes] = []
    last = 0
    for start, end, name, value in fields:
        if _is_forged(name, value, hostname):
            kept.append(raw[last:start])
            last = end
    if last == 0:
        return raw
    kept.append(raw[last:])
    return b"".join(kept)


def header_fields(raw: bytes) -> list[tuple[int, int, str, bytes]]:
    """(start, end, name, value with folds) of each header field of `raw`, in order: the
    byte ranges a header edit keeps untouched (the forward action's rewriting)."""
    return _fields(raw)


def _fields(raw: bytes) -> list[tuple[int, int, str, bytes]]:
    """(start, end, name, value with folds) of each header field, in order."""
    out: list[tuple[int, int, str, bytes]] = []
    pos = 0
    current: tuple[int, str, int] | None = None  # (start, name, value start)
    while pos < len(raw):
        newline = raw.find(b"\n", pos)
        end = len(raw) if newline < 0 else newline + 1
        line = raw[pos:end]
        if line[:1] in (b" ", b"\t") and line.strip(b"\r\n"):
            pos = end  # a folded continuation of the current field (RFC 5322 §2.2.3)
            continue
        if current is not None:
            start, name, value_start = current
            out.append((start, pos, name, raw[value_start:pos]))
            current = None
        match = _FIELD.match(line)
        if match is None:
            if pos == 0 and line.startswith(b"From "):
                pos = end  # an mbox "From " line before the headers
                continue
            break  # the empty line, or the first line of a body without a separator
        current = (pos, match.group(1).decode("ascii"), pos + match.end())
        pos = end
    if current is not None:
        start, name, value_start = current
        out.append((start, pos, name, raw[value_start:pos]))
    return out


def _is_forged(name: str, value: bytes, hostname: str) -> bool:
    if _FORGED_NAME.fullmatch(name):
        return True
    if name.lower() != "authentication-results":
        return False
    # RFC 8601 §2.2: authserv-id is the first value, before ";" (and an optional version).
    text = value.decode("utf-8", "replace")
    for _ in range(3):  # comments may nest; three levels is more than any real header has
        text = _COMMENT.sub(" ", text)
    words = text.split(";", 1)[0].split()
    return bool(words) and words[0].strip('"').lower() == hostname.strip().lower()


def _received(received: ReceivedFacts, hostname: str, helo: str, ip: str) -> str:
    # Postfix's layout (smtpd.c): the address literal of RFC 5321 §4.1.3, "for" with one RCPT.
    literal = f"IPv6:{ip}" if _is_ip(ip, IPv6Address) else ip
    rdns = _clean(received.rdns) if received.rdns else "unknown"
    protocol = "ESMTPS" if received.tls else "ESMTP"
    message_id = _clean(received.message_id)
    date = format_datetime(received.received_at)
    head = f"from {helo} ({rdns} [{literal}])\r\n\tby {hostname} with {protocol} id {message_id}"
    if len(received.rcpt_tos) == 1:
        return f"{head}\r\n\tfor <{_clean(received.rcpt_tos[0])}>; {date}"
    return f"{head};\r\n\t{date}"


def _received_spf(auth: AuthDetails, hostname: str, helo: str, mail_from: str, ip: str) -> str:
    # RFC 7208 §9.1, in SES's layout: result (comment) key=value; ...
    comment = _comment(f"{hostname}: {_clean(auth.spf_explanation)}")
    return (
        f"{_word(auth.spf)} {comment} client-ip={ip if _is_ip(ip) else _pvalue(ip)}; "
        f"envelope-from={_pvalue(_spf_identity(mail_from, helo))}; helo={_pvalue(helo)};"
    )


def _authentication_results(auth: AuthDetails, hostname: str, helo: str, mail_from: str) -> str:
    # RFC 8601 §2.2: authserv-id; then one resinfo per method, folded one per line.
    results = [f"spf={_word(auth.spf)} smtp.mailfrom={_pvalue(_spf_identity(mail_from, helo))}"]
    for dkim in auth.dkim:
        entry = f"dkim={_word(dkim.result)} header.d={_pvalue(_clean(dkim.domain))}"
        if dkim.selector:  # header.s: RFC 8601 §2.7.1
            entry += f" header.s={_pvalue(_clean(dkim.selector))}"
        results.append(entry)
    if not auth.dkim:
        results.append("dkim=none")
    dmarc = f"dmarc={_word(auth.dmarc)}"
    if auth.from_domain:
        dmarc += f" header.from={_pvalue(_clean(auth.from_domain))}"
    results.append(dmarc)
    return f"{hostname};\r\n\t" + ";\r\n\t".join(results)


def _spf_identity(mail_from: str, helo: str) -> str:
    # RFC 7208 §2.4: with a null reverse path SPF checks postmaster@HELO.
    return mail_from or f"postmaster@{helo}"


def _clean(text: str) -> str:
    return _CONTROLS.sub("?", text)


def _word(result: str) -> str:
    """A result keyword (RFC 8601 §2.2 `result`): letters only, or `none` if nothing is left."""
    word = re.sub(r"[^a-z]", "", result.lower())
    return word or "none"


def _pvalue(text: str) -> str:
    if _PLAIN_PVALUE.fullmatch(text):
        return text
    # RFC 5322 quoted-string, so ";" or "=" in a hostile value cannot forge another result.
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _comment(text: str) -> str:
    escaped = re.sub(r"([()\\])", r"\\\1", text)
    return f"({escaped})"


def _is_ip(ip: str, kind: type[IPv4Address | IPv6Address] | None = None) -> bool:
    # Real receivers write IPv6 unquoted in client-ip= too, although ":" is not dot-atom text.
    try:
        address = ip_address(ip)
    except ValueError:
        return False
    return kind is None or isinstance(address, kind)
