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
    # Commands that do not advance a transaction before 421 4.7.0 (Postfix's
    # smtpd_junk_command_limit is 100; inbound/receive/budget.py says what advances).
    max_junk_commands: int = 100
    # The longest a session may last, then 421 4.4.2 (a DATA in progress gets data_timeout
    # more). Exchange ends every session after 10 minutes (ConnectionTimeout) and Postfix's
    # client stops reusing a connection after 300 s; 30 minutes also carries a 40 MB message
    # at 200 kbit/s.
    max_session_time: float = 1800.0
    # SPEC section 7: the header block (up to the first empty line) is bounded on its own.
    max_header_size: int = 1024 * 1024
