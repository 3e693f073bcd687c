"""`inbound test [PATH ...]`: run rule test files; exit 1 if any case failed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from inbound.cli.args import add_data_limit_flags, data_limits
from inbound.cli.evaluate import show_webhooks
from inbound.cli.scanning import add_scan_flags, measure, scanners_from
from inbound.core.ids import MessageIdGenerator
from inbound.core.verdicts import Verdicts
from inbound.message.source import BytesSource
from inbound.scan.run import Scanners
from inbound.testing.run import LoadedCase, TestFileError, discover, load_files, run_case


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("test", help="run rule test files (*.test.yaml)")
    parser.add_argument(
        "paths",
        type=Path,
        nargs="*",
        metavar="PATH",
        help="test files or directories (default: the current directory)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only failures")
    parser.add_argument(
        "--show-webhooks",
        action="store_true",
        help="print the request each webhook action would send (one JSON line each)",
    )
    add_scan_flags(parser, "scanning (for cases with scan: true)")
    add_data_limit_flags(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    paths = discover(args.paths)
    if not paths:
        print("inbound test: no test files (*.test.yaml) found", file=sys.stderr)
        return 2
    try:
        files = load_files(paths, data_limits(args))
    except TestFileError as exc:
        for line in [*map(str, exc.issues), *exc.inputs]:
            print(line, file=sys.stderr)
        count = len(exc.issues) + len(exc.inputs)
        print(f"{count} error{'s' if count != 1 else ''}: no test was run", file=sys.stderr)
        return 2
    ids = MessageIdGenerator()
    scanners: list[Scanners] = []  # built for the first case that asks for a scan

    def measured(case: LoadedCase) -> Verdicts:
        if not scanners:
            scanners.append(scanners_from(args))
        source = BytesSource(case.received.data)
        return measure(scanners[0], case.rules, source, case.connection, case.envelope)

    passed = failed = 0
    for loaded in files:
        print(loaded.path)
        for case in loaded.cases:
            result = run_case(case, ids, measured)
            if result.passed:
                passed += 1
                if not args.quiet:
                    print(f"  PASS  {result.name}")
            else:
                failed += 1
                print(f"  FAIL  {result.name}")
                for failure in result.failures:
                    print(failure)  # FILE:LINE: case: key: what differed (editors jump to it)
            if args.show_webhooks:
                webhooks = show_webhooks(
                    result.plan, case.received.data, case.envelope, case.connection
                )
                for preview in webhooks:
                    print("        " + json.dumps(preview.as_json(), ensure_ascii=False))
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0
