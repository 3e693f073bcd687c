"""Standard Webhooks 1.0 signatures: the `webhook-id`, `webhook-timestamp` and
`webhook-signature` headers of one webhook attempt (SPEC section 3b).

The signature is `v1,` + base64(HMAC-SHA256(key, id + "." + timestamp + "." + body)), where
the key is the base64-decoded part of a `whsec_…` secret, else the secret's UTF-8 bytes. The
id names the message, the rule and the action, so it is the same on every retry (receivers
deduplicate on it); the timestamp is the attempt's (receivers reject old ones).

Pure functions: no environment, no clock, no logging. The secret is a value the caller read
from the environment; it must never reach a log line or an exception message, and nothing
here puts it in one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret


class SecretError(ValueError):
    """A `whsec_` secret whose rest is not base64 (the message never contains the secret)."""


def webhook_id(message_id: str, rule: int, action: int) -> str:
    """Stable per (message, rule, action): positions as in the spool's step keys."""
    return f"{message_id}-{rule}-{action}"


def signing_key(secret: str) -> bytes:
    """The HMAC key a secret stands for (the `standardwebhooks` libraries read it so)."""
    if secret.startswith(SECRET_PREFIX):
        encoded = secret[len(SECRET_PREFIX) :]
        try:
            # Unpadded base64 is common in generated secrets: pad it, as the libraries do.
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise SecretError("a whsec_ secret must be followed by base64") from None
        if not key:
            raise SecretError("a whsec_ secret must not be empty")
        return key
    if not secret:
        raise SecretError("the secret must not be empty")
    return secret.encode("utf-8")


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header's value for one attempt."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(
    msg_id: str, timestamp: int, body: bytes, key: bytes | None
) -> tuple[tuple[str, str], ...]:
    """The three headers (only the first two without a key: unsigned)."""
    headers = [("webhook-id", msg_id), ("webhook-timestamp", str(timestamp))]
    if key is not None:
        headers.append(("webhook-signature", signature(key, msg_id, timestamp, body)))
    return tuple(headers)
