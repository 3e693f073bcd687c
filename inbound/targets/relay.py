"""Sending mail through an outbound SMTP relay (`--relay HOST:PORT`): DSNs and whole messages.

`RelayMailer` is the mailer service of `--relay`: it builds the RFC 3464 report and hands it
to `RelaySender`. `RelayOutbound` is its outbound service (forwards, and bounces relayed back
through SRS): whole messages handed to the same sender. Without a relay, the target set's own
mailer applies (the local one records the request in an outbox; the AWS one refuses), and the
local outbox is the outbound service.

This module owns one SMTP exchange per message: opportunistic STARTTLS, the reverse path (the
null one for DSNs), every recipient or none, the relay's SIZE, and the mapping of SMTP replies
and network failures onto `TransientActionError` / `PermanentActionError`. It builds no message.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import ssl
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parseaddr

import aiosmtplib

from inbound.core.errors import InputError, PermanentActionError, TransientActionError
from inbound.core.ids import MessageIdGenerator
from inbound.core.services import BounceRequest, OutboundMail
from inbound.message.dsn import build_dsn

DEFAULT_PORT = 25
# The whole exchange (connect, STARTTLS, MAIL, RCPT, DATA) gets this long; every command too.
DEFAULT_TIMEOUT = 60.0
_HOSTNAME = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.?"
)
_FORMS = "HOST:PORT or [IPv6]:PORT"
# Nothing that could end or split an SMTP command line may be in RCPT TO (RFC 5321 §4.1.2).
_BAD_PATH = re.compile("[\x00-\x20\x7f<>\x85\u2028\u2029]")
_CONTROLS = re.compile("[\x00-\x1f\x7f]")
_MAX_REPLY = 200
# How long the relay's SIZE is trusted before it is asked again (a relay's limit rarely changes).
SIZE_TTL = 300.0


def parse_relay(text: str) -> tuple[str, int]:
    """`smtp.example.com:587`, `192.0.2.1:25`, `[2001:db8::1]:25`, or a bare host (port 25)."""

    def bad(reason: str) -> InputError:
        return InputError(f"--relay {text!r}: {reason} (expected {_FORMS})")

    value = text.strip()
    if not value:
        raise bad("empty")
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep:
            raise bad("missing ']'")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"{host!r} is not an IPv6 address") from None
        if rest and not rest.startswith(":"):
            raise bad("expected ':PORT' after ']'")
        port_text = rest[1:] if rest else str(DEFAULT_PORT)
    elif value.count(":") > 1:
        raise bad("put an IPv6 address in brackets")
    else:
        host, sep, port_text = value.partition(":")
        if not sep:
            port_text = str(DEFAULT_PORT)
        if not _HOSTNAME.fullmatch(host) or len(host) > 253:
            raise bad(f"{host!r} is not a host name or an IP address")
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise bad(f"port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def opportunistic_tls_context() -> ssl.SSLContext:
    """Encryption without authentication (RFC 7435; RFC 3207 §4.1), as MTAs do by default.

    A relay's certificate is not checked: a failed check could only fall back to plain text,
    which is no better than an unverified encrypted session.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class RelaySender:
    """Sends each DSN to its one recipient through the relay at `host:port`."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        local_hostname: str = "localhost",
        tls_context: ssl.SSLContext | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.host = host
        self.port = port
        self.local_hostname = local_hostname
        self.tls_context = tls_context or opportunistic_tls_context()
        self.timeout = timeout
        # (when learnt, SIZE or None): from the last EHLO.
        self._size: tuple[float, int | None] | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"relay {host}:{self.port}"

    async def send(self, bounce: BounceRequest, dsn: bytes) -> None:
        """Deliver `dsn` with `MAIL FROM:<>` and `RCPT TO:<bounce.to>`; raise an ActionError."""
        # RFC 3464 §2 / RFC 5321 §4.5.5: a DSN goes out with the null reverse path and is
        # never sent to the null reverse path (SPEC section 2: never to <>).
        if not bounce.to.strip():
            raise PermanentActionError("no DSN to the null sender <>")
        await self.deliver("", (bounce.to,), dsn)

    def _client(self) -> aiosmtplib.SMTP:
        # STARTTLS is ours to decide after EHLO (opportunistic: only when offered).
        return aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            local_hostname=self.local_hostname,
            timeout=self.timeout,
            start_tls=False,
        )

    async def deliver(self, mail_from: str, rcpt_to: Sequence[str], content: bytes) -> None:
        """One SMTP transaction: `content` to every address of `rcpt_to` or to none (a refused
        recipient ends the transaction before DATA); raise an ActionError."""
        paths = [_checked_path(address, "MAIL FROM") for address in (mail_from,) if address]
        recipients = [_checked_path(address, "RCPT TO") for address in rcpt_to]
        if not recipients:
            raise PermanentActionError("no recipient")
        client = self._client()
        try:
            async with asyncio.timeout(self.timeout):
                await self._exchange(client, paths[0] if paths else "", recipients, content)
        except aiosmtplib.SMTPResponseException as exc:
            raise _reply_error(self, exc.code, exc.message) from exc
        except (TimeoutError, aiosmtplib.SMTPException, ssl.SSLError, OSError) as exc:
            # Connection refused, reset, TLS failure, timeout: the relay may be back later.
            raise TransientActionError(f"{self}: {_describe(exc)}") from exc
        finally:
            client.close()

    async def announced_size(self) -> int | None:
        """The SIZE the relay announced in its last EHLO (RFC 1870 §4; 0 or none: no limit),
        asking it (connect, EHLO, QUIT) when it has not been asked for `SIZE_TTL` seconds."""
        known = self._size
        if known is not None and time.monotonic() - known[0] < SIZE_TTL:
            return known[1]
        client = self._client()
        try:
            async with asyncio.timeout(self.timeout):
                await client.connect()
                await client.ehlo()
                self._learn_size(client)
                with contextlib.suppress(TimeoutError, aiosmtplib.SMTPException, OSError):
                    await client.quit()
        except aiosmtplib.SMTPResponseException as exc:
            raise _reply_error(self, exc.code, exc.message) from exc
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            raise TransientActionError(f"{self}: {_describe(exc)}") from exc
        finally:
            client.close()
        assert self._size is not None
        return self._size[1]

    def _learn_size(self, client: aiosmtplib.SMTP) -> None:
        value = client.esmtp_extensions.get("size", "").strip()
        size = int(value) if value.isascii() and value.isdigit() else 0
        self._size = (time.monotonic(), size or None)

    async def _exchange(
        self, client: aiosmtplib.SMTP, mail_from: str, rcpt_to: list[str], content: bytes
    ) -> None:
        await client.connect()
        await client.ehlo()
        if client.supports_extension("starttls"):
            # Opportunistic (RFC 3207): STARTTLS when offered, then EHLO again (§4.2).
            await client.starttls(tls_context=self.tls_context, server_hostname=self.host)
            await client.ehlo()
        self._learn_size(client)
        options: list[str] = []
        if not all(a.isascii() for a in (mail_from, *rcpt_to)):
            # RFC 6531 §3.4: a non-ASCII mailbox needs SMTPUTF8 on the MAIL command.
            if not client.supports_extension("smtputf8"):
                raise PermanentActionError(f"{self} does not offer SMTPUTF8 for {rcpt_to!r}")
            options.append("SMTPUTF8")
        if client.supports_extension("size"):
            options.append(f"SIZE={len(content)}")  # RFC 1870 §6: refused before DATA
        await client.mail(mail_from, options=options, encoding="utf-8")
        for address in rcpt_to:
            await client.rcpt(address, encoding="utf-8")
        await client.data(content)
        # The message was accepted at the end of DATA (RFC 5321 §4.1.1.4); QUIT is a courtesy.
        with contextlib.suppress(TimeoutError, aiosmtplib.SMTPException, OSError):
            await client.quit()


def _checked_path(address: str, command: str) -> str:
    value = address.strip()
    # aiosmtplib quotes through email.utils.parseaddr; anything it would rewrite (comments,
    # lists) is refused here, so the message can only go to exactly this address.
    if not value or _BAD_PATH.search(value) or parseaddr(value)[1] != value:
        raise PermanentActionError(f"not an address for {command}: {_printable(value)!r}")
    return value


def _reply_error(
    relay: RelaySender, code: int, message: str
) -> TransientActionError | PermanentActionError:
    text = f"{relay} replied {code} {_printable(message)}"
    # RFC 5321 §4.2.1: 5yz is permanent; 4yz, and anything unexpected, may pass later.
    if 500 <= code <= 599:
        return PermanentActionError(text)
    return TransientActionError(text)


def _describe(exc: BaseException) -> str:
    detail = _printable(str(exc))
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _printable(text: str) -> str:
    clean = " ".join(_CONTROLS.sub(" ", text).split())
    return clean if len(clean) <= _MAX_REPLY else clean[:_MAX_REPLY] + "..."


class RelayMailer:
    """The mailer service: a DSN for each bounce request, sent through the relay."""

    def __init__(self, relay: RelaySender) -> None:
        self.relay = relay
        self._ids = MessageIdGenerator()

    async def send_bounce(self, bounce: BounceRequest) -> None:
        now = datetime.now(UTC)
        dsn = build_dsn(bounce, arrival=bounce.arrival or now, now=now, dsn_id=self._ids.next())
        await self.relay.send(bounce, dsn)


class RelayOutbound:
    """The outbound service of `--relay`: whole messages (forwards, relayed bounces) as they are."""

    def __init__(self, relay: RelaySender) -> None:
        self.relay = relay

    async def send(self, mail: OutboundMail) -> None:
        await self.relay.deliver(mail.mail_from, mail.rcpt_to, mail.content)

    async def max_size(self) -> int | None:
        return await self.relay.announced_size()
