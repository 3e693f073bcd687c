"""`inbound`: the front door. Parses flags, calls the stages, prints; exit codes of SPEC 6.

0 success, 1 a failure of what was asked (a test failed), 2 bad input. Bad input never
prints a traceback: every `InboundError` becomes a message naming the file and the problem.
A reader that closes stdout early (`inbound ... | head -1`) ends the command quietly with 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from inbound import __version__
from inbound.cli import check, evaluate, serve, spool, test, webhook
from inbound.cli import ses as ses_cli
from inbound.cli.args import Parser, check_data_dir
from inbound.core.errors import ConfigError, InboundError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="inbound",
        description="Inbound mail pipeline with the semantics of Amazon SES email receiving.",
    )
    parser.add_argument("--version", action="version", version=f"inbound {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check.add_parser(commands)
    evaluate.add_parser(commands)
    test.add_parser(commands)
    serve.add_parser(commands)
    spool.add_parser(commands)
    ses_cli.add_parser(commands)
    webhook.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return run(argv)
        finally:
            sys.stdout.flush()  # a closed pipe shows here, not in the flush at interpreter exit
    except BrokenPipeError:
        # The reader went away (`inbound ... | head -1`): what it did not read is of no use to
        # anyone. As the Python docs advise (signal module, "Note on SIGPIPE"), point stdout at
        # /dev/null so the flush at exit cannot fail again, and exit 1 without a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED


def run(argv: Sequence[str] | None) -> int:
    """Parse `argv`, run the command, turn bad input into a message and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with a usage message on a bad flag
    try:
        data_dir = getattr(args, "data_dir", None)
        if isinstance(data_dir, Path):
            # `serve` writes there; `spool` reads (and one day may have read-only access).
            check_data_dir(data_dir, writable=args.command == "serve")
        code: int = args.run(args)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        count = len(exc.issues)
        print(f"{count} error{'s' if count != 1 else ''}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except InboundError as exc:
        print(f"inbound {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
