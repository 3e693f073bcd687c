"""Every flag of every command says what it is for and, when it has one, its default."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from inbound.cli.args import HelpFormatter
from inbound.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[3]
_HIDDEN = argparse.SUPPRESS  # a flag hidden on purpose (a test hook) has no help to show


def commands(
    parser: argparse.ArgumentParser, name: str
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, child in action.choices.items():
                yield from commands(child, f"{name} {sub}")


def options(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        if not isinstance(
            action,
            argparse._HelpAction | argparse._VersionAction | argparse._SubParsersAction,
        ):
            yield action


COMMANDS = [(name, parser) for name, parser in commands(build_parser(), "inbound")]


@pytest.mark.parametrize(("name", "parser"), COMMANDS, ids=[name for name, _ in COMMANDS])
def test_every_flag_has_help_and_shows_its_default(
    name: str, parser: argparse.ArgumentParser
) -> None:
    assert parser.formatter_class is HelpFormatter, name
    formatter = HelpFormatter(name)
    for action in options(parser):
        flag = "/".join(action.option_strings) or action.dest
        if action.help == _HIDDEN:
            continue
        assert action.help, f"{name} {flag}: no help text"
        if action.option_strings and action.default not in (None, False, [], _HIDDEN):
            shown = formatter._get_help_string(action) or ""
            assert "default" in shown, f"{name} {flag}: the default {action.default!r} is not shown"


def test_serve_help_shows_defaults() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "inbound", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"},
        check=False,
    )
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert any(
        line.strip().startswith("--rules RULES") and "the rule file" in line for line in lines
    )
    assert "longest line, CRLF included; longer gets 500 5.5.2 (default: 1000)" in result.stdout
    assert any("--max-connections N" in line and "(default: 1000)" in line for line in lines)
