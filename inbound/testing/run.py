"""Run rule test files: load every file first (bad input is exit 2), then each case.

Rule sets and messages are loaded once per path, so a thousand cases over a few fixtures
run in seconds.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path

from inbound.actions.forward import planned_forwards
from inbound.config.yamlsource import SourceMap, parse_yaml
from inbound.core.envelope import Connection, Envelope
from inbound.core.errors import ConfigError, ConfigIssue, InputError
from inbound.core.ids import MessageIdGenerator
from inbound.core.message import MessageFacts
from inbound.core.plan import Plan
from inbound.core.verdicts import Verdicts
from inbound.receive.limits import ReceiverLimits
from inbound.rules.compiled import CompiledRuleSet
from inbound.rules.evaluate import evaluate, results_by_function
from inbound.rules.load import load_rule_set, read_text, validate
from inbound.testing.model import Case, Expect, TestFile
from inbound.testing.received import ReceivedMessage, receive_file, refuse_as_serve
from inbound.testing.webhooks import webhook_urls

TEST_FILE_SUFFIXES = (".test.yaml", ".test.yml")


@dataclass(frozen=True)
class LoadedCase:
    case: Case
    rules: CompiledRuleSet
    message: MessageFacts
    connection: Connection
    envelope: Envelope
    eml: Path
    received: ReceivedMessage
    # Where the case is written, so a failure names FILE:LINE of what it expected.
    source: SourceMap
    index: int

    def line_of(self, key: str) -> int:
        """The line of `expect.KEY` (of the case, if it has no such key)."""
        return self.source.key_at(("cases", self.index, "expect", key)).line


@dataclass(frozen=True)
class Failure:
    """One expectation that did not hold: its `expect` key, what differed, and its line."""

    file: str
    line: int
    case: str
    key: str
    text: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.case}: {self.key}: {self.text}"


@dataclass(frozen=True)
class LoadedFile:
    path: Path
    cases: list[LoadedCase]


@dataclass(frozen=True)
class CaseResult:
    name: str
    failures: list[Failure]
    plan: Plan

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class _Cache:
    rules: dict[tuple[Path, tuple[str, ...]], CompiledRuleSet] = field(default_factory=dict)
    messages: dict[Path, ReceivedMessage] = field(default_factory=dict)
    limits: ReceiverLimits = field(default_factory=ReceiverLimits)


def discover(paths: Sequence[Path]) -> list[Path]:
    """Files as given; directories searched for `*.test.yaml` / `*.test.yml`."""
    found: list[Path] = []
    for path in paths or [Path()]:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*.test.y*ml") if p.is_file()))
        else:
            found.append(path)
    return found


def load_files(paths: Sequence[Path], limits: ReceiverLimits | None = None) -> list[LoadedFile]:
    """Load every test file, its rules and its messages (each read as `inbound serve` with
    these DATA limits would receive it); raise with every problem found."""
    cache = _Cache(limits=limits or ReceiverLimits())
    loaded: list[LoadedFile] = []
    issues: list[ConfigIssue] = []
    inputs: list[str] = []
    for path in paths:
        try:
            loaded.append(_load_file(path, cache, issues))
        except ConfigError as exc:
            issues.extend(exc.issues)
        except InputError as exc:
            inputs.append(str(exc))
    if issues or inputs:
        raise TestFileError(issues, inputs)
    return loaded


class TestFileError(InputError):
    """Test files that cannot run: config issues with positions, and unreadable inputs."""

    def __init__(self, issues: list[ConfigIssue], inputs: list[str]) -> None:
        self.issues = sorted(issues)
        self.inputs = inputs
        super().__init__("\n".join([*map(str, self.issues), *inputs]))


def _load_file(path: Path, cache: _Cache, issues: list[ConfigIssue]) -> LoadedFile:
    data, source, early = parse_yaml(read_text(path), str(path))
    if early:
        raise ConfigError(early)
    test_file = validate(TestFile, data, source)
    base = path.parent
    rules_path = base / test_file.rules
    key = (rules_path.resolve(), tuple(test_file.domains))
    if key not in cache.rules:
        rule_set = load_rule_set(rules_path, extra_domains=test_file.domains).rule_set
        cache.rules[key] = CompiledRuleSet.build(rule_set)
    rules = cache.rules[key]
    cases: list[LoadedCase] = []
    names: set[str] = set()
    for i, case in enumerate(test_file.cases):
        if case.name in names:
            issues.append(source.issue(("cases", i, "name"), f"duplicate case name {case.name!r}"))
        names.add(case.name)
        issues.extend(_unknown_rule_names(case, i, rules, source))
        loaded = _load_case(case, i, base, rules, cache, source, issues)
        if loaded is not None:
            cases.append(loaded)
    return LoadedFile(path, cases)


def _load_case(  # noqa: PLR0917 - private helper of _load_file, called once
    case: Case,
    i: int,
    base: Path,
    rules: CompiledRuleSet,
    cache: _Cache,
    source: SourceMap,
    issues: list[ConfigIssue],
) -> LoadedCase | None:
    eml = (base / case.eml).resolve()
    if eml not in cache.messages:
        try:
            cache.messages[eml] = receive_file(eml, cache.limits)
        except InputError as exc:
            issues.append(source.issue(("cases", i, "eml"), str(exc)))
            return None
    try:
        client_ip = ip_address(case.client_ip)
    except ValueError:
        issues.append(source.issue(("cases", i, "client_ip"), f"{case.client_ip!r} is not an IP"))
        return None
    received = cache.messages[eml]
    message = received.facts
    mail_from = case.mail_from if case.mail_from is not None else default_sender(message)
    return LoadedCase(
        case,
        rules,
        message,
        Connection(client_ip, case.helo, case.tls),
        Envelope(mail_from, tuple(case.rcpt)),
        eml,
        received,
        source,
        i,
    )


def _unknown_rule_names(
    case: Case, i: int, rules: CompiledRuleSet, source: SourceMap
) -> Iterable[ConfigIssue]:
    """A rule name in `expect.rules`/`not_rules` that the rule set does not have is a mistake
    in the test file (a `not_rules` typo would pass for ever), reported as such: exit 2."""
    names = [rule.name for rule in rules.rules]
    for key in ("rules", "not_rules"):
        for j, name in enumerate(getattr(case.expect, key) or []):
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                message = f"no rule {name!r} in the rule set{hint}"
                yield source.issue(("cases", i, "expect", key, j), message)


def default_sender(message: MessageFacts) -> str:
    """Without an explicit MAIL FROM, the From header's first address (else `<>`)."""
    return message.from_addresses[0] if message.from_addresses else ""


# Measures a case's verdicts with real scanners (the cases that say `scan: true`).
Measure = Callable[[LoadedCase], Verdicts]


def run_case(
    loaded: LoadedCase, ids: MessageIdGenerator, measure: Measure | None = None
) -> CaseResult:
    case = loaded.case
    measured = measure(loaded) if case.scan and measure is not None else None
    plan = evaluate(
        loaded.rules,
        message_id=ids.next(),
        connection=loaded.connection,
        envelope=loaded.envelope,
        message=loaded.message,
        verdicts=case.verdicts.to_verdicts(measured),
        lambda_results=results_by_function(case.lambda_),
    )
    plan = refuse_as_serve(plan, loaded.received)
    failures = [
        Failure(loaded.source.file, loaded.line_of(key), case.name, key, text)
        for key, text in check_expectations(case.expect, plan, loaded.rules)
    ]
    return CaseResult(case.name, failures, plan)


def _reply_matches(expected: str, code: int, status: str) -> bool:
    want_code, _, want_status = expected.partition(" ")
    return int(want_code) == code and (not want_status or want_status == status)


def check_expectations(
    expect: Expect, plan: Plan, rules: CompiledRuleSet | None = None
) -> Iterable[tuple[str, str]]:
    """Each expectation that failed: its key, and what was expected and what was seen
    (`rules`: the rule set of the plan, for `forwards`)."""
    if expect.outcome is not None and expect.outcome != plan.outcome:
        yield "outcome", f"expected {expect.outcome}, saw {plan.outcome}"
    if "data_reply" in expect.model_fields_set:
        seen = plan.data_reply
        if expect.data_reply is None:
            if seen is not None:
                yield "data_reply", f"expected none, saw {seen}"
        elif seen is None or not _reply_matches(expect.data_reply, seen.code, seen.status):
            shown = seen or "none (no recipient accepted)"
            yield "data_reply", f"expected {expect.data_reply}, saw {shown}"
    ran = [run.name for run in plan.rules]
    if expect.rules is not None and expect.rules != ran:
        yield "rules", f"expected {_list(expect.rules)}, saw {_list(ran)}"
    if expect.not_rules is not None:
        unwanted = [name for name in expect.not_rules if name in ran]
        if unwanted:
            yield "not_rules", f"{_list(unwanted)} matched (saw {_list(ran)})"
    if expect.actions is not None:
        types = [step.action.receipt_type for run in plan.rules for step in run.actions]
        if expect.actions != types:
            yield "actions", f"expected {_list(expect.actions)}, saw {_list(types)}"
    if expect.webhooks is not None and expect.webhooks != (urls := webhook_urls(plan)):
        yield "webhooks", f"expected {_list(expect.webhooks)}, saw {_list(urls)}"
    for address, wanted in (expect.recipients or {}).items():
        decision = next((r for r in plan.recipients if r.address.lower() == address.lower()), None)
        if decision is None:
            yield "recipients", f"{address} was not in the envelope"
        elif not _reply_matches(wanted, decision.reply.code, decision.reply.status):
            yield "recipients", f"{address} expected {wanted}, saw {decision.reply}"
    if expect.forwards is not None and rules is not None:
        compiled = rules
        planned = planned_forwards(
            plan, lambda index: compiled.rules[index].model.recipients, mail_from=None
        )
        sent = [d.address for p in planned for d in p.forward.destinations]
        if [a.lower() for a in expect.forwards] != [a.lower() for a in sent]:
            yield "forwards", f"expected {_list(expect.forwards)}, saw {_list(sent)}"


def _list(items: Sequence[str]) -> str:
    return "[" + ", ".join(items) + "]"
