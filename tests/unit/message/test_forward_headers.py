"""The header edits of a forward: rewrite, the loop marker and check, and DKIM signing."""

from __future__ import annotations

import base64
from email.parser import BytesParser
from email.policy import default
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from inbound.message.dkim_sign import DkimKeyError, SigningKey, load_key, parse_key, sign
from inbound.message.forward import loop_reason, mark_forwarded, read_from, rewrite
from inbound.message.headers import header_fields

TRACE = (
    b"Return-Path: <alice@sender.test>\r\n"
    b"Received: from client.test (unknown [192.0.2.1])\r\n\tby mx.test with ESMTP id m1\r\n"
)
BODY = b"\r\nHello,\r\nthe body stays as it is.\r\n"


def message(*fields: bytes) -> bytes:
    return TRACE + b"".join(f + b"\r\n" for f in fields) + BODY


def rewritten(raw: bytes) -> bytes:
    return rewrite(raw, from_address="forwarder@example.com", recipient="support@example.com")


def headers(raw: bytes) -> dict[str, list[str]]:
    parsed = BytesParser(policy=default).parsebytes(raw)
    out: dict[str, list[str]] = {}
    for name, value in parsed.items():
        out.setdefault(name.lower(), []).append(str(value))
    return out


def test_a_bare_address_from_becomes_the_name_via_the_recipients_domain() -> None:
    out = rewritten(message(b"From: alice@sender.test", b"Subject: hi"))
    seen = headers(out)
    assert seen["from"] == ['"alice@sender.test via example.com" <forwarder@example.com>']
    assert seen["reply-to"] == ["alice@sender.test"]
    assert seen["x-original-from"] == ["alice@sender.test"]
    assert seen["x-original-to"] == ["support@example.com"]
    assert out.endswith(BODY)


@pytest.mark.parametrize(
    ("written", "name"),
    [
        (b'From: "Doe, Alice" <alice@sender.test>', "Doe, Alice"),
        (b'From: "Alice \\"Ace\\" Doe" <alice@sender.test>', 'Alice "Ace" Doe'),
        (b"From: =?utf-8?q?Al=C3=AFce_D=C3=B6e?= <alice@sender.test>", "Alïce Döe"),
        (b"From: =?iso-8859-1?b?QWxpY2UsIETWRQ==?= <alice@sender.test>", "Alice, DÖE"),
        (b"From: Alice <alice@sender.test>, bob@sender.test", "Alice"),
    ],
)
def test_display_names_are_read_and_written_by_the_address_parser(
    written: bytes, name: str
) -> None:
    out = rewritten(message(written, b"Sender: list@sender.test"))
    parsed = BytesParser(policy=default).parsebytes(out)
    (address,) = parsed["From"].addresses
    assert address.display_name == f"{name} via example.com"
    assert address.addr_spec == "forwarder@example.com"
    assert parsed["Reply-To"].addresses[0].display_name == name
    assert parsed["Reply-To"].addresses[0].addr_spec == "alice@sender.test"
    # The same address list as Reply-To, written by the same parser.
    values = {name.lower(): value for _s, _e, name, value in header_fields(out)}
    assert values["x-original-from"] == values["reply-to"]
    assert "Sender" not in parsed
    assert out.isascii()  # non-ASCII names go out as RFC 2047 encoded words


def test_an_existing_reply_to_is_kept_byte_for_byte() -> None:
    reply_to = b"Reply-To: =?utf-8?q?Team?= <team@sender.test>"
    out = rewritten(message(b"From: alice@sender.test", reply_to))
    assert reply_to + b"\r\n" in out
    assert headers(out)["reply-to"] == ["Team <team@sender.test>"]


def test_rewrite_removes_every_dkim_signature_sender_and_return_path() -> None:
    raw = message(
        b"DKIM-Signature: v=1; a=rsa-sha256; d=sender.test; s=s1;\r\n\tb=AAAA",
        b"From: alice@sender.test",
        b"dkim-signature: v=1; a=ed25519-sha256; d=sender.test; s=s2; b=BBBB",
        b"Sender: list@sender.test",
        b"To: support@example.com",
    )
    out = rewritten(raw)
    seen = headers(out)
    for name in ("dkim-signature", "sender", "return-path"):
        assert name not in seen
    assert b"AAAA" not in out
    assert b"BBBB" not in out
    # What is not edited keeps its bytes: the Received header with its fold, To.
    assert b"\tby mx.test with ESMTP id m1\r\n" in out
    assert b"To: support@example.com\r\n" in out


def test_preserve_touches_nothing_but_the_marker_and_our_return_path() -> None:
    raw = message(b"DKIM-Signature: v=1; b=AAAA", b"From: Alice <alice@sender.test>")
    out = mark_forwarded(raw, "fwd.test")
    assert out == b"X-Inbound-Forwarded: fwd.test\r\n" + raw.removeprefix(
        b"Return-Path: <alice@sender.test>\r\n"
    )
    # A Return-Path that is not ours (not above a Received) stays, byte for byte.
    original = b"From: a@b.test\r\nReturn-Path: <x@y.test>\r\n\r\nbody"
    assert mark_forwarded(original, "fwd.test").endswith(original)


def test_a_message_without_from_gets_a_from_and_no_reply_to() -> None:
    out = rewritten(message(b"Subject: hi"))
    seen = headers(out)
    assert seen["from"] == ['"unknown sender via example.com" <forwarder@example.com>']
    assert "reply-to" not in seen
    assert seen["x-original-to"] == ["support@example.com"]


def test_undecodable_bytes_in_a_name_do_not_stop_the_rewrite() -> None:
    out = rewritten(message(b"From: Al\xffice <alice@sender.test>"))
    assert out.isascii()
    assert read_from(out).addresses[0].addr_spec == "forwarder@example.com"


def test_loops_are_found_by_our_marker_or_the_received_count() -> None:
    raw = message(b"From: alice@sender.test")
    assert loop_reason(raw, "fwd.test") is None
    assert loop_reason(mark_forwarded(raw, "other.test"), "fwd.test") is None
    reason = loop_reason(mark_forwarded(raw, "FWD.test"), "fwd.test")
    assert reason is not None
    assert "already forwarded by fwd.test" in reason
    many = b"Received: from x by y; Mon, 1 Jan 2026 00:00:00 +0000\r\n" * 25 + raw
    reason = loop_reason(many, "fwd.test")
    assert reason is not None
    assert "26 Received headers" in reason
    assert (
        loop_reason(
            many[len(b"Received: from x by y; Mon, 1 Jan 2026 00:00:00 +0000\r\n") :], "fwd.test"
        )
        is None
    )


# --- DKIM -------------------------------------------------------------------------------------


def rsa_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def ed25519_pem() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def verify(signed: bytes, key: SigningKey, name: bytes = b"s1._domainkey.example.com.") -> bool:
    """dkimpy's verifier against a zone holding only the published record."""
    zone = {name: key.dns_record().encode("ascii")}

    def txt(asked: bytes, timeout: int = 5) -> bytes | None:
        return zone.get(asked if asked.endswith(b".") else asked + b".")

    return bool(dkim.verify(signed, dnsfunc=txt))


@pytest.mark.parametrize(
    ("pem", "algorithm"), [(rsa_pem, "rsa-sha256"), (ed25519_pem, "ed25519-sha256")]
)
def test_the_signature_over_the_rewritten_forward_verifies(pem: object, algorithm: str) -> None:
    assert callable(pem)
    key = parse_key(pem(), "key.pem")
    assert key.algorithm == algorithm
    out = mark_forwarded(
        rewritten(message(b"From: Alice <alice@sender.test>", b"Subject: hi")), "fwd.test"
    )
    signed = sign(out, domain="example.com", selector="s1", key=key)
    assert signed.endswith(out)
    tags = signed.split(b"\r\n\r\n")[0]
    assert f"a={algorithm}".encode() in tags
    assert b"c=relaxed/relaxed" in tags
    assert verify(signed, key)
    # The From it covers is the rewritten one: changing it breaks the signature.
    assert not verify(signed.replace(b"forwarder@example.com", b"other@example.com"), key)


def test_an_ed25519_seed_file_as_dknewkey_writes_it(tmp_path: Path) -> None:
    seed = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    path = tmp_path / "s1.key"
    path.write_bytes(base64.b64encode(seed) + b"\n")
    key = load_key(path)
    signed = sign(message(b"From: a@example.com"), domain="example.com", selector="s1", key=key)
    assert verify(signed, key)
    assert key.dns_record().startswith("v=DKIM1; k=ed25519; p=")
    assert base64.b64encode(seed).decode() not in repr(key)


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (None, "no such file"),
        (b"not a key", "not a PEM private key nor a base64 Ed25519 seed"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not a usable PEM"),
    ],
)
def test_an_unusable_key_file_is_an_error_naming_it(
    tmp_path: Path, content: bytes | None, said: str
) -> None:
    path = tmp_path / "dkim.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DkimKeyError) as raised:
        load_key(path)
    assert str(path) in str(raised.value)
    assert said in str(raised.value)
