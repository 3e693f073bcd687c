"""Flag helpers shared by the commands: repeated NAME=VALUE pairs and the --domain flag."""

from __future__ import annotations

import argparse

from inbound.core.errors import InputError


def add_domain_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--domain",
        action="append",
        default=[],
        metavar="DOMAIN",
        help="a receiving domain (for SES JSON rule sets, which have none)",
    )


def pairs(flag: str, values: list[str]) -> dict[str, str]:
    """`NAME=VALUE` flags as a mapping; a value without `=` is an `InputError`."""
    out: dict[str, str] = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise InputError(f"{flag} {value!r}: expected NAME=VALUE")
        out[key] = item
    return out
