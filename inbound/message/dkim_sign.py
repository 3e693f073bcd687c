"""DKIM signing of a forwarded message (SPEC section 3b, `forward` with `dkim:`).

This module owns the signing keys (read from the rule's `key_file`: RSA or Ed25519, PEM, or
the base64 Ed25519 seed that `dknewkey` writes), the DNS record that publishes each one, and
the signature itself: dkimpy, relaxed/relaxed canonicalization (RFC 6376 §3.4.2, §3.4.4:
survives the folding and whitespace changes of the MTAs on the way), `rsa-sha256` or
`ed25519-sha256` (RFC 8463) by the key. The signature goes on top of the message, after every
other header change, so it covers the headers as the destination sees them.

A key that cannot be used is a `DkimKeyError` naming the file (`inbound check` exits 2 on it);
the key's bytes never reach a message or a log line.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from inbound.core.errors import InputError, read_user_file

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]

# Headers signed when present (RFC 6376 §5.4.1's list, trimmed to what a forward carries);
# From twice: "over-signing" it, so a second From cannot be added later (RFC 6376 §8.15).
SIGNED_HEADERS = (
    b"from",
    b"from",
    b"reply-to",
    b"subject",
    b"date",
    b"to",
    b"cc",
    b"message-id",
    b"in-reply-to",
    b"references",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
    b"x-original-from",
    b"x-original-to",
    b"x-inbound-forwarded",
)


class DkimKeyError(InputError):
    """A DKIM key file that cannot be read or is not a key inbound can sign with."""


class DkimSignError(ValueError):
    """dkimpy refused to sign the message (a message without a From header, say)."""


@dataclass(frozen=True)
class SigningKey:
    """A private key ready for dkimpy, and its public half for the DNS record."""

    algorithm: Algorithm
    # What dkimpy takes: PEM (PKCS#1) for RSA, the base64 32-byte seed for Ed25519.
    private: bytes = b""
    public: bytes = b""  # DER SubjectPublicKeyInfo (RSA) or the raw 32 bytes (Ed25519)

    def dns_record(self) -> str:
        """The TXT record to publish at SELECTOR._domainkey.DOMAIN (RFC 6376 §3.6.1)."""
        kind = "rsa" if self.algorithm == "rsa-sha256" else "ed25519"
        return f"v=DKIM1; k={kind}; p={base64.b64encode(self.public).decode('ascii')}"

    def __repr__(self) -> str:  # never show the private key
        return f"SigningKey({self.algorithm})"


def load_key(path: Path) -> SigningKey:
    """The key in `path`; a `DkimKeyError` naming the file if it is unusable."""
    try:
        data = read_user_file(path, f"dkim key_file {path}")
    except InputError as exc:
        raise DkimKeyError(str(exc)) from None
    return parse_key(data, str(path))


def parse_key(data: bytes, name: str) -> SigningKey:
    """A key from a file's bytes (`name` for errors): PEM RSA or Ed25519, or an Ed25519 seed."""
    if b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            message = f"dkim key_file {name}: not a usable PEM private key ({exc})"
            raise DkimKeyError(message) from None
        if isinstance(key, rsa.RSAPrivateKey):
            if key.key_size < 1024:  # RFC 8301 §3.2: verifiers refuse smaller keys
                raise DkimKeyError(f"dkim key_file {name}: RSA key of {key.key_size} bits")
            private = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
            public = key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            return SigningKey("rsa-sha256", private, public)
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return _ed25519(key)
        raise DkimKeyError(f"dkim key_file {name}: neither an RSA nor an Ed25519 key")
    try:
        seed = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        seed = b""
    if len(seed) != 32:
        raise DkimKeyError(f"dkim key_file {name}: not a PEM private key nor a base64 Ed25519 seed")
    return _ed25519(ed25519.Ed25519PrivateKey.from_private_bytes(seed))


def _ed25519(key: ed25519.Ed25519PrivateKey) -> SigningKey:
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return SigningKey("ed25519-sha256", base64.b64encode(seed), public)


def sign(message: bytes, *, domain: str, selector: str, key: SigningKey) -> bytes:
    """`message` with a DKIM-Signature header on top (relaxed/relaxed, module docstring)."""
    try:
        signature = dkim.sign(
            message,
            selector.encode("ascii"),
            domain.encode("ascii"),
            key.private,
            canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=key.algorithm.encode("ascii"),
            include_headers=list(SIGNED_HEADERS),
        )
    except dkim.DKIMException as exc:
        raise DkimSignError(f"cannot sign with d={domain} s={selector}: {exc}") from None
    return bytes(signature) + message
