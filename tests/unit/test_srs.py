"""The Sender Rewriting Scheme (SPEC section 3b): forward, reverse, rotation, age, forgery."""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inbound.core.errors import InputError
from inbound.srs import (
    NotSrs,
    SrsError,
    SrsExpired,
    SrsForged,
    SrsKeys,
    is_srs,
    srs_forward,
    srs_reverse,
)

NOW = datetime(2026, 12, 6, 13, 0, tzinfo=UTC)
KEYS = SrsKeys((b"first secret",))


def test_round_trip_of_an_srs0_address() -> None:
    address = srs_forward("Alice@Example.org", "fwd.example.com", KEYS, NOW)
    local, _, domain = address.partition("@")
    assert domain == "fwd.example.com"
    tag, hash_, stamp, original_domain, original_local = local.split("=")
    assert (tag, original_domain, original_local) == ("SRS0", "Example.org", "Alice")
    assert len(hash_) == 8
    assert len(stamp) == 2
    assert srs_reverse(address, KEYS, NOW) == "Alice@Example.org"


def test_a_local_part_with_equals_signs_survives() -> None:
    address = srs_forward("a=b==c@example.org", "fwd.example.com", KEYS, NOW)
    assert srs_reverse(address, KEYS, NOW) == "a=b==c@example.org"


def test_an_srs0_address_becomes_srs1_and_reverses_to_the_first_forwarder() -> None:
    first = srs_forward("alice@example.org", "first.example", KEYS, NOW)
    other_keys = SrsKeys((b"the second forwarder's",))
    second = srs_forward(first, "second.example", other_keys, NOW)
    assert second.startswith("SRS1=")
    inner = first.removeprefix("SRS0=").rpartition("@")[0]
    assert second.endswith(f"=first.example=={inner}@second.example")
    assert srs_reverse(second, other_keys, NOW) == first
    # A third forwarder keeps the first forwarder's part instead of nesting.
    third = srs_forward(second, "third.example", KEYS, NOW)
    assert third.count("SRS") == 1
    assert "first.example==" in third
    assert srs_reverse(third, KEYS, NOW) == first
    assert srs_reverse(srs_reverse(third, KEYS, NOW), KEYS, NOW) == "alice@example.org"


def test_a_forged_hash_is_refused() -> None:
    address = srs_forward("alice@example.org", "fwd.example.com", KEYS, NOW)
    tag, hash_, rest = address.split("=", 2)
    forged = f"{tag}={'A' if hash_[0] != 'A' else 'B'}{hash_[1:]}={rest}"
    with pytest.raises(SrsForged):
        srs_reverse(forged, KEYS, NOW)
    # Another original address under a genuine hash: the hash covers the rest.
    with pytest.raises(SrsForged):
        srs_reverse(address.replace("=alice@", "=mallory@"), KEYS, NOW)
    with pytest.raises(SrsForged):
        srs_reverse(address, SrsKeys((b"someone else's",)), NOW)


def test_twenty_one_days_verify_and_twenty_two_have_expired() -> None:
    address = srs_forward("alice@example.org", "fwd.example.com", KEYS, NOW)
    assert srs_reverse(address, KEYS, NOW + timedelta(days=21)) == "alice@example.org"
    with pytest.raises(SrsExpired):
        srs_reverse(address, KEYS, NOW + timedelta(days=22))
    # A forged address says nothing about its age: forged is checked first.
    with pytest.raises(SrsForged):
        srs_reverse(address, SrsKeys((b"other",)), NOW + timedelta(days=22))


def test_a_rotated_out_key_fails_and_the_previous_key_still_passes() -> None:
    old = SrsKeys((b"old",))
    signed_with_old = srs_forward("alice@example.org", "fwd.example.com", old, NOW)
    rotated = SrsKeys((b"new", b"old"))
    assert srs_reverse(signed_with_old, rotated, NOW) == "alice@example.org"
    signed_with_new = srs_forward("alice@example.org", "fwd.example.com", rotated, NOW)
    assert signed_with_new != signed_with_old
    assert srs_reverse(signed_with_new, SrsKeys((b"new",)), NOW) == "alice@example.org"
    with pytest.raises(SrsForged):
        srs_reverse(signed_with_old, SrsKeys((b"new",)), NOW)


def test_the_hash_and_the_whole_address_compare_without_case() -> None:
    address = srs_forward("Alice@Example.org", "fwd.example.com", KEYS, NOW)
    assert srs_reverse(address.lower(), KEYS, NOW) == "alice@example.org"
    assert srs_reverse(address.upper(), KEYS, NOW) == "ALICE@EXAMPLE.ORG"


def test_not_srs_addresses() -> None:
    for address in ["alice@example.org", "SRS0=abc@x", "SRS0=HASHHASH=AB=x@y", "SRS1=H@x", "", "x"]:
        with pytest.raises(NotSrs):
            srs_reverse(address, KEYS, NOW)
    assert is_srs("srs0=x@y")
    assert is_srs("SRS1=x@y")
    assert not is_srs("srs2=x@y")
    assert issubclass(NotSrs, SrsError)
    assert issubclass(SrsExpired, SrsError)


def test_the_null_sender_is_never_rewritten() -> None:
    with pytest.raises(ValueError, match="null sender"):
        srs_forward("", "fwd.example.com", KEYS, NOW)
    with pytest.raises(ValueError, match="not local@domain"):
        srs_forward("no-at-sign", "fwd.example.com", KEYS, NOW)


def test_keys_from_the_environment() -> None:
    assert SrsKeys.from_env({}) is None
    keys = SrsKeys.from_env({"INBOUND_SRS_SECRETS": "new, old"})
    assert keys is not None
    assert keys.secrets == (b"new", b"old")
    assert "new" not in repr(keys)
    for value in ["", " ", "a,,b", "a, "]:
        with pytest.raises(InputError, match="INBOUND_SRS_SECRETS") as caught:
            SrsKeys.from_env({"INBOUND_SRS_SECRETS": value})
        assert "a" not in str(caught.value).split(":")[0]


_LOCAL = st.text(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~.", min_size=1)
_DOMAIN = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z]{2,6}){1,3}", fullmatch=True)


@given(local=_LOCAL, domain=_DOMAIN, days=st.integers(0, 21), seconds=st.integers(0, 2**31))
def test_every_address_round_trips(local: str, domain: str, days: int, seconds: int) -> None:
    now = datetime.fromtimestamp(seconds, UTC)
    address = f"{local}@{domain}"
    forwarded = srs_forward(address, "fwd.example.com", KEYS, now)
    back = srs_reverse(forwarded, KEYS, now + timedelta(days=days))
    if is_srs(address):
        # Another forwarder's address: ours reverses to it only if it was a well-formed one.
        assert back.lower().startswith("srs0")
    else:
        assert back == address
