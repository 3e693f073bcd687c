"""The Sender Rewriting Scheme (SPEC section 3b): envelope senders for forwarded mail, and back.

A forward in `preserve` mode keeps the original From, so the envelope sender must be one the
next hop's SPF check accepts for the forwarder, and one whose bounces come back to it:
`SRS0=HASH=TT=domain=local@srs_domain`. A bounce to that address is relayed to `local@domain`
only when HASH verifies and TT is at most `MAX_AGE_DAYS` old, so nobody can use the forwarder
as an open relay by writing SRS addresses of their own.

The format is Shevek's scheme as libsrs2 writes it ("SRS: Sender Rewriting Scheme", 2004):
- `TT` is the day number modulo 1024 in two base32 characters;
- an address that already is SRS0 (another forwarder's) becomes
  `SRS1=HASH=first-forwarder==HHH=TT=domain=local@srs_domain`, keeping the first forwarder's
  part instead of nesting; an SRS1 address keeps its first forwarder and inner part and gets a
  new hash. SRS1 carries no timestamp: the first forwarder checks the inner SRS0's age.
- HASH is an HMAC-SHA1 over the rest of the local part (everything after `HASH=`), lowercased
  so that an MTA that lowercases addresses does not break the reverse path.

Two choices differ from libsrs2, which only matters to the reverse path (inbound's own):
the hash is 8 characters of base32, not 4 of base64. Base32 has one case only, so comparing
case-insensitively (as every SRS implementation must: mailers lowercase) loses nothing, and 8
characters are 40 bits, where 4 base64 characters compared without case are about 21, a
million RCPT commands from a forgery.

Why the standard library's `hmac` and not `srslib`: the whole scheme is these two functions
(about 100 lines), srslib would add a dependency for them and fixes the hash at 4 base64
characters; with `hmac.compare_digest` the comparison is constant time, and key rotation (sign
with the first secret, verify with all) is a loop.

This module is pure: no I/O, no clock (the caller passes `now`), no logging.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from inbound.core.errors import InputError

SECRETS_ENV = "INBOUND_SRS_SECRETS"
# SPEC section 3b: an SRS0 address is valid 21 days.
MAX_AGE_DAYS = 21
# A timestamp this many days ahead still verifies: two forwarders whose clocks straddle midnight.
MAX_SKEW_DAYS = 1
HASH_LENGTH = 8
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_DAYS = 1024  # two base32 characters
_SECONDS_PER_DAY = 86400


class SrsError(Exception):
    """An address could not be reversed; the receiver answers each with `550 5.1.1`."""


class NotSrs(SrsError):  # noqa: N818 (the names fwd-action was promised)
    """Not an SRS0/SRS1 address, or one whose parts cannot be decoded."""


class SrsForged(SrsError):  # noqa: N818
    """The hash does not verify with any of the secrets: not an address inbound signed."""


class SrsExpired(SrsError):  # noqa: N818
    """The hash verifies but the timestamp is more than `MAX_AGE_DAYS` old (or in the future)."""


@dataclass(frozen=True, slots=True)
class SrsKeys:
    """The SRS secrets: the first signs, every one verifies (rotation: add a new one first,
    drop the old one once its addresses have expired, 21 days later)."""

    secrets: tuple[bytes, ...] = field(repr=False)

    def __post_init__(self) -> None:
        if not self.secrets or any(not s for s in self.secrets):
            raise ValueError("SrsKeys needs at least one secret, none of them empty")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SrsKeys | None:
        """The keys in `INBOUND_SRS_SECRETS` (comma separated), or None when it is unset."""
        value = environ.get(SECRETS_ENV)
        if value is None:
            return None
        entries = [entry.strip() for entry in value.split(",")]
        if any(not entry for entry in entries):
            # Never the value itself: it is a secret.
            raise InputError(
                f"{SECRETS_ENV}: an empty secret (expected one or more secrets, comma separated,"
                " the first signs)"
            )
        return cls(tuple(entry.encode("utf-8") for entry in entries))


def is_srs(address: str) -> bool:
    """Whether the local part claims to be SRS (`SRS0=` or `SRS1=`, any case)."""
    return address[:5].upper() in ("SRS0=", "SRS1=")


def srs_forward(address: str, srs_domain: str, keys: SrsKeys, now: datetime) -> str:
    """The envelope sender to forward mail from `address` with; ValueError for the null sender
    (never rewritten: a bounce must not bounce) or an address without `local@domain`."""
    local, domain = _split(address)
    tag = local[:5].upper()
    if tag == "SRS0=":
        # Another forwarder's address: keep its part (with its separator) behind its domain.
        rest = f"{domain}={local[4:]}"
    elif tag == "SRS1=":
        parts = local.split("=", 3)
        if len(parts) != 4 or not parts[2] or not parts[3]:
            raise ValueError(f"malformed SRS1 address: {address!r}")
        rest = f"{parts[2]}={parts[3]}"
    else:
        stamp = _encode_day(_day(now))
        rest = f"{stamp}={domain}={local}"
        return f"SRS0={_hash(keys.secrets[0], rest)}={rest}@{srs_domain}"
    return f"SRS1={_hash(keys.secrets[0], rest)}={rest}@{srs_domain}"


def srs_reverse(address: str, keys: SrsKeys, now: datetime) -> str:
    """The address `srs_forward` encoded in `address`; raises `NotSrs`, `SrsForged` or
    `SrsExpired` (checked in that order: a forged address says nothing about its age)."""
    try:
        local, _domain = _split(address)
    except ValueError:
        raise NotSrs("not local@domain") from None
    tag = local[:5].upper()
    if tag not in ("SRS0=", "SRS1="):
        raise NotSrs("no SRS0= or SRS1= tag")
    parts = local.split("=", 2)
    if len(parts) != 3:
        raise NotSrs("no hash")
    given, rest = parts[1], parts[2]
    if tag == "SRS0=":
        fields = rest.split("=", 2)
        if len(fields) != 3 or len(fields[0]) != 2 or not fields[1] or not fields[2]:
            raise NotSrs("SRS0 needs HASH=TT=domain=local")
        _verify(given, rest, keys)
        stamp, original_domain, original_local = fields
        day = _decode_day(stamp)
        age = (_day(now) - day) % _DAYS
        if MAX_AGE_DAYS < age < _DAYS - MAX_SKEW_DAYS:
            raise SrsExpired(f"signed {age} days ago (valid {MAX_AGE_DAYS})")
        return f"{original_local}@{original_domain}"
    host, sep, inner = rest.partition("=")
    if not sep or not host or not inner:
        raise NotSrs("SRS1 needs HASH=host=inner")
    _verify(given, rest, keys)
    # Back to the first forwarder's SRS0 address; that forwarder checks its own hash and age.
    return f"SRS0{inner}@{host}"


def _split(address: str) -> tuple[str, str]:
    if not address:
        raise ValueError("the null sender <> is never rewritten")
    local, sep, domain = address.rpartition("@")
    if not sep or not local or not domain:
        raise ValueError(f"not local@domain: {address!r}")
    return local, domain


def _hash(secret: bytes, rest: str) -> str:
    digest = hmac.new(secret, rest.lower().encode("utf-8"), hashlib.sha1).digest()
    return base64.b32encode(digest)[:HASH_LENGTH].decode("ascii")


def _verify(given: str, rest: str, keys: SrsKeys) -> None:
    candidate = given.upper().encode("utf-8")
    # Every secret is tried whatever matched, so the time taken says nothing about which.
    matched = False
    for secret in keys.secrets:
        matched |= hmac.compare_digest(candidate, _hash(secret, rest).encode("ascii"))
    if not matched:
        raise SrsForged("the hash does not verify")


def _day(now: datetime) -> int:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return int(now.timestamp() // _SECONDS_PER_DAY) % _DAYS


def _encode_day(day: int) -> str:
    return _BASE32[day >> 5] + _BASE32[day & 31]


def _decode_day(stamp: str) -> int:
    high, low = _BASE32.find(stamp[0].upper()), _BASE32.find(stamp[1].upper())
    if high < 0 or low < 0:
        raise NotSrs("the timestamp is not base32")
    return (high << 5) | low
