"""Receiver limits (SPEC section 7), all configurable; defaults follow SES and RFC 5321."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ReceiverLimits:
    # SES stores messages of up to 40 MB (S3 action); SIZE is advertised (RFC 1870).
    max_message_size: int = 40 * 1024 * 1024
    # RFC 5321 §4.5.3.1.8: at least 100 recipients must be accepted.
    max_recipients: int = 100
    # RFC 5321 §4.5.3.1.6: 1000 octets per line, CRLF included.
    max_line_length: int = 1000
    # RFC 5321 §4.5.3.2: 5 minutes per command; 10 minutes for the end of DATA.
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    max_connections: int = 1000
    max_connections_per_ip: int = 50
    # SPEC section 7: the header block (up to the first empty line) is bounded on its own.
    max_header_size: int = 1024 * 1024
