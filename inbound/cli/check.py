"""`inbound check RULES`: validate a rule file; warnings never change the exit code.

`--ses` adds, rule by rule, what SES can run natively, what needs the guard Lambda and what is
local only (the table of `inbound.ses.export`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from inbound.actions.forward import ForwardAction
from inbound.cli.args import add_domain_flag
from inbound.config.yamlsource import SourceMap
from inbound.core.errors import ConfigError, ConfigIssue
from inbound.rules.load import load_rule_set
from inbound.rules.model import RuleSet
from inbound.ses.export import guard_collisions, ses_capabilities, ses_problems


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("check", help="validate a rule file (YAML or SES JSON)")
    parser.add_argument(
        "rules", type=Path, metavar="RULES", help="the rule file (YAML or SES JSON)"
    )
    add_domain_flag(parser)
    parser.add_argument(
        "--ses", action="store_true", help="list, rule by rule, what SES can express"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    loaded = load_rule_set(args.rules, extra_domains=args.domain)
    if unusable := list(_unusable_keys(loaded.rule_set, loaded.source)):
        raise ConfigError(unusable)
    for warning in loaded.warnings:
        print(warning, file=sys.stderr)
    rs = loaded.rule_set
    enabled = sum(1 for r in rs.rules if r.enabled)
    print(
        f"{args.rules}: ok: rule set {rs.name!r}, {len(rs.rules)} rules ({enabled} enabled), "
        f"{len(rs.filters)} filters, domains {', '.join(rs.domains)}"
        + (f", {len(loaded.warnings)} warnings" if loaded.warnings else "")
    )
    if args.ses:
        for problem in ses_problems(rs):
            if problem.rule is None:
                print(f"{args.rules}: ses: {problem}")
        for capability in ses_capabilities(rs):
            print(f"{args.rules}: ses: {capability}")
        for a, b in guard_collisions(rs):
            print(
                f"{args.rules}: ses: guard: {a.name} and {b.name} have different conditions for "
                "recipients that overlap: one shared guard ARN cannot tell them apart "
                "(put {rule} in the --lower-extensions ARN)"
            )
    return 0


def _unusable_keys(rule_set: RuleSet, source: SourceMap) -> list[ConfigIssue]:
    """A forward's `dkim.key_file` that cannot be read or is no key: an error here, as it
    would fail every forward of the rule (SPEC 3b)."""
    issues: list[ConfigIssue] = []
    for i, rule in enumerate(rule_set.rules):
        for j, action in enumerate(rule.actions):
            if isinstance(action, ForwardAction) and (problem := action.key_problem()):
                path = ("rules", i, "actions", j, "dkim", "key_file")
                issues.append(source.issue(path, problem))
    return issues
