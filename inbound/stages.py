"""The builders of `inbound serve`'s stages from its `ServeSettings`, one function each: the
scanners, the action services, the TLS context, the rule book, the data directory's lock, the
`--lambda` functions, and the warnings about what is missing at start.

`inbound.app.build` calls them in its one start-up sequence; each raises an `InputError` for a
bad flag, file or certificate before anything starts. They wire no stage to another.
"""

from __future__ import annotations

import fcntl
import importlib
import logging
import os
import ssl
from collections.abc import Mapping
from concurrent.futures import Executor
from pathlib import Path
from typing import IO

from inbound.actions import BounceAction
from inbound.core.errors import InputError
from inbound.core.services import Services
from inbound.datadir import append_file
from inbound.observe.log import emit
from inbound.rules.book import RuleBook
from inbound.rules.load import environment_issues
from inbound.scan.clamd import ClamdScanner
from inbound.scan.dns import DnsPythonResolver, Resolver, ZoneResolver
from inbound.scan.run import Scanners
from inbound.scan.spamd import SpamdScanner
from inbound.ses.rulesets import connection_issues
from inbound.settings import ServeSettings
from inbound.spool.s3 import S3Committer
from inbound.spool.store import Spool
from inbound.targets.aws import NO_REGION, AwsTargets, SesOutbound, aws_session
from inbound.targets.http import WebhookHttp
from inbound.targets.local import LambdaFunction, LocalOutbox, LocalTargets
from inbound.targets.relay import RelayMailer, RelayOutbound, RelaySender
from inbound.tls import load_tls_context, self_signed_context

log = logging.getLogger("inbound.app")


def load_functions(mapping: Mapping[str, str]) -> dict[str, LambdaFunction]:
    """`NAME=module:function` flags to callables; a bad one is an `InputError`."""
    functions: dict[str, LambdaFunction] = {}
    for name, target in mapping.items():
        module_name, _, attribute = target.partition(":")
        if not module_name or not attribute:
            raise InputError(f"--lambda {name}={target}: expected NAME=module:function")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise InputError(
                f"--lambda {name}={target}: cannot import {module_name}: {exc}"
            ) from None
        function = getattr(module, attribute, None)
        if not callable(function):
            raise InputError(f"--lambda {name}={target}: {module_name} has no function {attribute}")
        functions[name] = function
    return functions


def announce_missing_scanners(settings: ServeSettings, book: RuleBook) -> None:
    """Rules that ask for spam and virus scans while no scanner is configured: say so at
    start (their messages get PROCESSING_FAILED verdicts, SPEC section 2)."""
    scanning = [r.name for r in book.current.compiled.rules if r.scan_enabled and r.enabled]
    flags = (("--clamd", settings.clamd), ("--spamd", settings.spamd))
    missing = [flag for flag, value in flags if not value]
    if scanning and missing:
        emit(
            log,
            "scanners.missing",
            level=logging.WARNING,
            rules=scanning,
            missing=missing,
            hint="these rules' messages get PROCESSING_FAILED spam/virus verdicts",
        )


def announce_hostname(settings: ServeSettings) -> None:
    """A name without a dot is not what an MX must give in its greeting and trace headers
    (RFC 5321 §4.1.1.1, §4.4: a fully qualified domain name): say so at start."""
    if "." not in settings.hostname.strip("."):
        emit(
            log,
            "hostname.not_qualified",
            level=logging.WARNING,
            hostname=settings.hostname,
            hint="give the name clients know this MX by: --hostname mx.example.com",
        )


def build_scanners(settings: ServeSettings, auth_pool: Executor | None = None) -> Scanners:
    """The scanners `--clamd`, `--spamd` and the DNS settings ask for (bad ones: InputError)."""
    resolver: Resolver
    if settings.dns_zones:
        resolver = ZoneResolver.from_files(settings.dns_zones, timeout=settings.dns_timeout)
    else:
        resolver = DnsPythonResolver(settings.dns_timeout)
    return Scanners(
        resolver=resolver,
        virus=ClamdScanner(settings.clamd, timeout=settings.scan_timeout)
        if settings.clamd
        else None,
        spam=SpamdScanner(
            settings.spamd, timeout=settings.scan_timeout, gray_band=settings.spam_gray_band
        )
        if settings.spamd
        else None,
        auth_timeout=settings.dns_timeout * 2,
        auth_executor=auth_pool,
    )


def build_services(settings: ServeSettings, book: RuleBook, *, announce: bool = True) -> Services:
    """The services `--targets` and `--relay` ask for; `announce` logs what is missing.

    `--targets` is the shortcut for the blob store, the topic and the function (local files,
    or AWS); `--relay` chooses the mailer. Code may choose each apart (`Services(...)`)."""
    s = settings
    base: LocalTargets | AwsTargets
    http = WebhookHttp(ca_file=s.webhook_ca)  # the same for both target sets
    if s.targets == "aws":
        session = aws_session()
        if session.region_name is None:  # at start, not as dead letters later
            raise InputError(NO_REGION)
        base = AwsTargets(session=session, http=http)
    else:
        base = LocalTargets(s.data_dir, functions=load_functions(s.lambdas), http=http)
    outbox = LocalOutbox(s.data_dir)
    # `forward` with `via: ses`: SES itself on AWS; locally the outbox, as S3 is files.
    ses_outbound = SesOutbound(base) if isinstance(base, AwsTargets) else outbox
    if s.relay is not None:
        host, port = s.relay
        relay = RelaySender(host, port, local_hostname=s.hostname)
        return Services.of(
            base,
            mailer=RelayMailer(relay),
            outbound=RelayOutbound(relay),
            ses_outbound=ses_outbound,
        )
    bouncing = [
        r.name
        for r in book.current.compiled.rules
        if any(isinstance(a, BounceAction) for a in r.actions)
    ]
    if bouncing and announce:
        emit(
            log,
            "relay.missing",
            level=logging.WARNING,
            rules=bouncing,
            hint="bounces after acceptance need --relay HOST:PORT to send their DSNs",
        )
    # Without a relay, forwards and relayed bounces go to the local outbox (SPEC section 3b).
    return Services.of(base, outbound=outbox, ses_outbound=ses_outbound)


def tls_context(
    settings: ServeSettings, book: RuleBook, *, announce: bool = True
) -> ssl.SSLContext | None:
    """STARTTLS's context from `--tls-cert/--tls-key` or `--tls-self-signed`, else None."""
    s = settings
    if s.tls_cert is not None and s.tls_key is not None:
        return load_tls_context(s.tls_cert, s.tls_key)
    if s.tls_self_signed:
        return self_signed_context(s.data_dir / "tls", s.hostname)
    if announce:
        requiring = [r.name for r in book.current.compiled.rules if r.require_tls]
        emit(
            log,
            "tls.disabled",
            level=logging.WARNING,
            hint="no certificate: STARTTLS is not offered; use --tls-cert and --tls-key, "
            "or --tls-self-signed for development",
            rules_requiring_tls=requiring,
        )
    return None


def rule_book(settings: ServeSettings, spool: Spool | S3Committer) -> RuleBook:
    """The rules at `--rules`, each version kept in the spool for the messages received under it."""
    return RuleBook(
        settings.rules,
        save_text=spool.save_rules,
        load_text=spool.load_rules,
        extra_domains=settings.domains,
        # What the rules need from the environment (a webhook's secret_env, the SRS secrets of
        # a forward) fails the start (exit 2) or the reload (the old rules stay), not each
        # message.
        check=lambda loaded: (
            environment_issues(loaded, os.environ)
            + (connection_issues(loaded) if settings.s3_spool is not None else [])
        ),
    )


class DataDirInUse(InputError):  # noqa: N818 - read as "the data directory is in use"
    """An `inbound serve` holds the data directory's lock (`inbound spool delete` asks too)."""


def lock_data_dir(data_dir: Path) -> IO[bytes]:
    """One receiver per data directory: two would dispatch the same messages twice."""
    handle = append_file(data_dir / "inbound.lock")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DataDirInUse(
            f"{data_dir}: another inbound serve is using this data directory"
        ) from None
    return handle
