"""Flag helpers shared by the commands: repeated NAME=VALUE pairs, the --domain flag, and the
checks of a --data-dir before a command uses it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from inbound.config.fields import size_in_bytes
from inbound.core.errors import InputError
from inbound.receive.limits import ReceiverLimits

_DEFAULTS = ReceiverLimits()


def add_domain_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--domain",
        action="append",
        default=[],
        metavar="DOMAIN",
        help="a receiving domain (for SES JSON rule sets, which have none)",
    )


class HelpFormatter(argparse.HelpFormatter):
    """Every flag's help ends with its default when it has one worth showing (not None, False
    or an empty list) and the text does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default in (None, False, [], argparse.SUPPRESS)
            or not action.option_strings
        ):
            return text
        return f"{text} (default: {str(default).replace('%', '%%')})"


class Parser(argparse.ArgumentParser):
    """inbound's parsers, subcommands' included: they show defaults in their help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def pairs(flag: str, values: list[str]) -> dict[str, str]:
    """`NAME=VALUE` flags as a mapping; a value without `=` is an `InputError`."""
    out: dict[str, str] = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise InputError(f"{flag} {value!r}: expected NAME=VALUE")
        out[key] = item
    return out


def check_data_dir(path: Path, *, writable: bool) -> None:
    """Refuse a `--data-dir` inbound cannot use, naming the problem (SPEC 6: exit 2).

    A regular file, a path under one, or (for a command that writes there) a directory that
    is read-only or cannot be created: said before anything starts, not as an OSError from
    deep inside the start-up."""
    if path.exists() and not path.is_dir():
        raise InputError(f"--data-dir {path}: is a file, not a directory")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"--data-dir {path}: {existing} is a file, not a directory")
    if not writable:
        return
    # access(2) answers EROFS for W_OK on a read-only file system, even to root.
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if _read_only(existing) else "is not writable"
        if existing == path:
            raise InputError(f"--data-dir {path}: {why}")
        raise InputError(f"--data-dir {path}: cannot be created: {existing} {why}")


def _read_only(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def parse_size(flag: str, value: str) -> int:
    """`40MB`, `512k`, `1000` as bytes; anything else is an `InputError` naming the flag."""
    size = size_in_bytes(value)
    if size is None:
        raise InputError(f"{flag} {value!r}: expected a size like 40MB or 512k")
    return size


def add_data_limit_flags(parser: argparse.ArgumentParser) -> None:
    """The limits `inbound serve` applies to DATA, for the commands that decide as it does."""
    group = parser.add_argument_group("DATA limits (as inbound serve's)")
    group.add_argument(
        "--max-message-size",
        default="40MB",
        metavar="SIZE",
        help="larger messages get 552 5.3.4",
    )
    group.add_argument(
        "--max-header-size",
        default="1MB",
        metavar="SIZE",
        help="a larger header block gets 552 5.3.4",
    )
    group.add_argument(
        "--max-line-length",
        type=int,
        default=_DEFAULTS.max_line_length,
        metavar="OCTETS",
        help="a longer line (CRLF included) gets 500 5.5.2",
    )


def data_limits(args: argparse.Namespace) -> ReceiverLimits:
    return ReceiverLimits(
        max_message_size=parse_size("--max-message-size", args.max_message_size),
        max_header_size=parse_size("--max-header-size", args.max_header_size),
        max_line_length=args.max_line_length,
    )
