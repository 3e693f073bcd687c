"""Why a STARTTLS handshake failed, as the log says it (RFC 3207; smtp.py runs the handshake)."""

from __future__ import annotations

import re
import ssl


def handshake_failure(error: Exception | None) -> str:
    """Why a handshake failed, for the log: OpenSSL's reason code (`NO_SHARED_CIPHER`,
    `UNSUPPORTED_PROTOCOL`...), or the kind of failure; never the error's text."""
    if error is None:
        return "CONNECTION_CLOSED"
    reason = getattr(error, "reason", None) if isinstance(error, ssl.SSLError) else None
    if isinstance(reason, str) and re.fullmatch(r"[A-Z0-9_]{1,64}", reason):
        return reason
    return type(error).__name__
