"""Load a rule set from native YAML or from SES `describe-receipt-rule-set` JSON.

Every problem is reported at once with its position (`ConfigError`); SES quota overruns and
likely mistakes are warnings returned beside the rule set. Nothing here evaluates rules.
"""

from __future__ import annotations

import difflib
import json
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from inbound.config.fields import check_domain, network_meant
from inbound.config.yamlsource import Path_, SourceMap, format_path, load_yaml, parse_yaml
from inbound.core.errors import ConfigError, ConfigIssue, InputError, Severity
from inbound.rules import ses_json
from inbound.rules.model import RuleSet

# SES quotas for receiving (DG quotas.md); errors only for `inbound ses export/apply`.
SES_MAX_RULES = 200
SES_MAX_ACTIONS = 10
SES_MAX_RECIPIENTS = 100
SES_MAX_FILTERS = 100


@dataclass(frozen=True)
class LoadedRuleSet:
    rule_set: RuleSet
    warnings: list[ConfigIssue]
    source: SourceMap


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a file") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None


def load_rule_set(path: Path, *, extra_domains: Sequence[str] = ()) -> LoadedRuleSet:
    """Read, validate and check a rule file; raise `ConfigError` listing every error."""
    return parse_rule_set(read_text(path), str(path), extra_domains=extra_domains)


def parse_rule_set(text: str, file: str, *, extra_domains: Sequence[str] = ()) -> LoadedRuleSet:
    """Validate rule-set text (YAML or SES JSON); `file` names it in error messages."""
    early: list[ConfigIssue] = []
    path = Path(file)
    derived = False  # domains taken from an SES rule set's recipients, not written in the file
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        data, source = _load_json(text, file)
        data, source, early = ses_json.to_native(data, source, stem=path.stem)
        if isinstance(data, dict) and not data.get("domains"):
            data["domains"] = ses_json.derive_domains(data)
            derived = True
    else:
        data, source, early = parse_yaml(text, file)
    written = data.get("domains") if isinstance(data, dict) and not derived else None
    own_domains = len(written) if isinstance(written, list) else 0
    if extra_domains and isinstance(data, dict):
        known = data.get("domains")
        data["domains"] = [*(known if isinstance(known, list) else []), *extra_domains]
    errors = early + list(_duplicate_names(data, source))
    try:
        rule_set = validate(RuleSet, data, source)
    except ConfigError as exc:
        # A value flagged while reading (`off`, a duplicate key) is reported once, and a
        # key reported unknown is not reported missing as well.
        flagged = {i.path for i in early}
        errors += [
            i
            for i in exc.issues
            if i.path not in flagged
            and not (i.message.startswith("missing") and any(f.startswith(i.path) for f in flagged))
        ]
    if errors:
        raise ConfigError(errors)
    problems = list(_action_problems(rule_set, source))
    if errors := [p for p in problems if p.severity is Severity.ERROR]:
        raise ConfigError(errors)
    warnings = [
        *(p for p in problems if p.severity is Severity.WARNING),
        *_warnings(rule_set, source),
        *_host_bits(data, source),
        *_repeated_domains(data, source, own_domains),
    ]
    return LoadedRuleSet(rule_set, sorted(warnings), source)


def environment_issues(loaded: LoadedRuleSet, env: Mapping[str, str]) -> list[ConfigIssue]:
    """What the enabled rules' actions need from the environment and do not find there (a
    webhook's `secret_env`), at their positions: `inbound serve` and the SES handler refuse
    such a rule set; `inbound check` does not ask (CI has no production secrets)."""
    issues: list[ConfigIssue] = []
    for i, rule in enumerate(loaded.rule_set.rules):
        if not rule.enabled:
            continue
        for j, action in enumerate(rule.actions):
            for where, message in action.environment_issues(env):
                issues.append(loaded.source.issue(("rules", i, "actions", j, *where), message))
    return issues


def _load_json(text: str, file: str) -> tuple[object, SourceMap]:
    try:
        return load_yaml(text, file)  # JSON is YAML, and YAML keeps positions
    except ConfigError:
        pass
    try:
        return json.loads(text), SourceMap(file)
    except json.JSONDecodeError as exc:
        issue = ConfigIssue(file, exc.lineno, exc.colno, "", f"invalid JSON: {exc.msg}")
        raise ConfigError([issue]) from None


M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], data: object, source: SourceMap) -> M:
    """Validate `data` against `model`; raise `ConfigError` with positions and hints."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        issues = [_issue(model, data, source, err) for err in exc.errors()]
        raise ConfigError(_without_implied_missing(issues)) from None


def _without_implied_missing(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    """`bukcet` (did you mean 'bucket'?) already says that 'bucket' is missing."""
    suggested = {
        (issue.path.rpartition(".")[0], issue.message.split("did you mean ")[1][1:-3])
        for issue in issues
        if "(did you mean " in issue.message and issue.message.startswith("unknown key")
    }
    return [
        issue
        for issue in issues
        if not (
            issue.message.startswith("missing required key ")
            and (issue.path, issue.message.removeprefix("missing required key ")[1:-1]) in suggested
        )
    ]


def _issue(model: type[BaseModel], data: object, source: SourceMap, err: Any) -> ConfigIssue:
    kind = err["type"]
    path = _data_path(data, tuple(err["loc"]), kind)
    if kind == "extra_forbidden":
        key = str(path[-1])
        allowed = _allowed_keys(model, tuple(err["loc"])[:-1], data)
        return source.issue(path, f"unknown key {key!r}{_did_you_mean(key, allowed)}", at_key=True)
    if kind == "missing":
        return source.issue(path[:-1], f"missing required key {source.display(path)[-1]!r}")
    if kind == "union_tag_invalid":
        tag = str(err["ctx"]["tag"])
        tags = [t.strip(" '") for t in str(err["ctx"]["expected_tags"]).split(",")]
        message = (
            f"unknown action type {tag!r}{_did_you_mean(tag, tags)}; "
            f"the types are {', '.join(sorted(tags))}"
        )
        return source.issue((*path, "type"), message)
    if kind == "union_tag_not_found":
        return source.issue(path, "missing required key 'type'")
    got = _value_at(data, path)
    if kind in ("literal_error", "enum"):
        message = f"must be {err['ctx']['expected']}, not {_show(got)}"
    elif kind in ("string_type", "bool_type", "int_type", "list_type", "dict_type", "model_type"):
        wanted = {
            "string_type": "a string",
            "bool_type": "true or false",
            "int_type": "an integer",
            "list_type": "a list",
            "dict_type": "a mapping",
            "model_type": "a mapping",
        }[kind]
        message = f"must be {wanted}, not {_show(got)}"
    elif kind == "value_error":
        message = str(err["msg"]).removeprefix("Value error, ")
    else:
        message = str(err["msg"])[:1].lower() + str(err["msg"])[1:]
    return source.issue(path, message)


def _show(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _data_path(data: object, loc: tuple[Any, ...], kind: str) -> Path_:
    """Drop the parts of a pydantic `loc` that are not in the data (union tags)."""
    out: list[str | int] = []
    current = data
    for part in loc:
        if _has(current, part):
            out.append(part)
            current = current[part]  # type: ignore[index]
        elif kind in ("missing", "extra_forbidden") and part == loc[-1]:
            out.append(part)  # a missing key, or an unknown key pydantic reports
        # else: a union tag such as 's3' in ('actions', 0, 's3', 'bucket')
    return tuple(out)


def _has(container: object, part: object) -> bool:
    if isinstance(container, dict):
        return part in container
    return isinstance(container, list) and isinstance(part, int) and 0 <= part < len(container)


def _value_at(data: object, path: Path_) -> object:
    current = data
    for part in path:
        if _has(current, part):
            current = current[part]  # type: ignore[index]
        else:
            return None
    return current


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types an annotation allows: Optional, Annotated and unions removed."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _unwrap(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [t for arg in get_args(annotation) for t in _unwrap(arg) if t is not type(None)]
    return [annotation]


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...], data: object) -> list[str]:
    """The keys the model accepts at `loc`, for "did you mean"."""
    candidates: list[Any] = [model]
    for part in loc:
        following: list[Any] = []
        for candidate in candidates:
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                for name, info in candidate.model_fields.items():
                    if part in (name, info.alias):
                        following.extend(_unwrap(info.annotation))
                tag = candidate.model_fields.get("type")
                if tag is not None and part in get_args(tag.annotation):
                    following.append(candidate)  # the union tag names this model
            elif get_origin(candidate) in (list, tuple) and isinstance(part, int):
                following.extend(t for arg in get_args(candidate)[:1] for t in _unwrap(arg))
            elif get_origin(candidate) is dict:
                following.extend(_unwrap(get_args(candidate)[1]))
        candidates = following
    keys: list[str] = []
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            keys.extend(info.alias or name for name, info in candidate.model_fields.items())
    return keys


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    by_lower = {c.lower(): c for c in candidates}
    # difflib's ratio for one wrong character in a short word ('s4' for 's3') is 0.5.
    cutoff = 0.5 if len(word) <= 3 else 0.6
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=cutoff)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


def _duplicate_names(data: object, source: SourceMap) -> Iterable[ConfigIssue]:
    """Rule names are unique (case-insensitively, as SES compares them); so are filter names."""
    if not isinstance(data, dict):
        return
    for section in ("rules", "filters"):
        items = data.get(section)
        seen: dict[str, int] = {}
        for i, item in enumerate(items if isinstance(items, list) else []):
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str):
                continue
            if name.lower() in seen:
                first = source.value_at((section, seen[name.lower()], "name")).line
                what = section.removesuffix("s")
                message = f"duplicate {what} name {name!r} (first at line {first})"
                yield source.issue((section, i, "name"), message)
            else:
                seen[name.lower()] = i


def _action_problems(rule_set: RuleSet, source: SourceMap) -> Iterable[ConfigIssue]:
    """What each action finds wrong in its rule (`ActionModel.problems_in_rule`): a forward's
    `\\1` with no such group in the rule's `re:` recipients, say."""
    for i, rule in enumerate(rule_set.rules):
        for j, action in enumerate(rule.actions):
            for problem in action.problems_in_rule(rule.recipients, rule_set.domains):
                path = ("rules", i, "actions", j, *problem.path)
                if problem.warning:
                    yield _warn(source, path, problem.message)
                else:
                    yield source.issue(path, problem.message)


def _warn(source: SourceMap, path: Path_, message: str) -> ConfigIssue:
    issue = source.issue(path, message)
    return ConfigIssue(
        issue.file, issue.line, issue.column, issue.path, issue.message, Severity.WARNING
    )


def _warnings(rule_set: RuleSet, source: SourceMap) -> Iterable[ConfigIssue]:
    if len(rule_set.rules) > SES_MAX_RULES:
        yield _warn(source, ("rules",), f"{len(rule_set.rules)} rules: SES allows {SES_MAX_RULES}")
    if len(rule_set.filters) > SES_MAX_FILTERS:
        count = len(rule_set.filters)
        yield _warn(source, ("filters",), f"{count} filters: SES allows {SES_MAX_FILTERS}")
    domains = set(rule_set.domains)
    for i, rule in enumerate(rule_set.rules):
        if len(rule.actions) > SES_MAX_ACTIONS:
            count = len(rule.actions)
            message = f"{count} actions: SES allows {SES_MAX_ACTIONS} per rule"
            yield _warn(source, ("rules", i, "actions"), message)
        if len(rule.recipients) > SES_MAX_RECIPIENTS:
            count = len(rule.recipients)
            message = f"{count} recipients: SES allows {SES_MAX_RECIPIENTS} per rule"
            yield _warn(source, ("rules", i, "recipients"), message)
        for j, action in enumerate(rule.actions):
            for where, message in action.config_warnings():
                yield _warn(source, ("rules", i, "actions", j, *where), message)
        for j, pattern in enumerate(rule.recipients):
            domain = _pattern_domain(pattern)
            if domain is not None and not _within(domain, domains):
                message = (
                    f"{pattern!r} is outside the receiving domains "
                    f"({', '.join(rule_set.domains)}): mail to it is refused with 550 5.7.1"
                )
                yield _warn(source, ("rules", i, "recipients", j), message)


def _host_bits(data: object, source: SourceMap) -> Iterable[ConfigIssue]:
    """CIDRs with host bits set, as written (the model keeps only the network they mean).

    A warning, not an error: SES accepts host bits and so must a rule set exported from it;
    but `10.0.0.1/8` is most often a typo for one address, so say what it matches."""
    for path, cidr in _cidrs(data):
        network = network_meant(cidr)
        if network is not None:
            address = cidr.partition("/")[0]
            single = f"{address}/{128 if ':' in address else 32}"
            message = (
                f"{cidr!r} has host bits set: it matches the whole network {network}; "
                f"write {network}, or {single} for the one address"
            )
            yield _warn(source, path, message)


def _repeated_domains(data: object, source: SourceMap, own: int) -> Iterable[ConfigIssue]:
    """A domain the file lists twice (as written or once normalised): kept once, and said, as
    it is most often a typo for another domain. Not for `--domain` naming one of the file's."""
    assert isinstance(data, dict)
    first: dict[str, int] = {}
    for i, written in enumerate(data["domains"][:own]):
        domain = check_domain(written)  # valid: the model accepted it
        if domain in first:
            line = source.value_at(("domains", first[domain])).line
            message = f"domain {written!r} is listed twice (first at line {line}): kept once"
            yield _warn(source, ("domains", i), message)
        else:
            first[domain] = i


def _cidrs(data: object) -> Iterable[tuple[Path_, str]]:
    """Every `filters[].cidr` and `client_ip` condition in the (valid) data, with its path."""
    assert isinstance(data, dict)
    for i, item in enumerate(data.get("filters") or []):
        yield ("filters", i, "cidr"), str(item["cidr"])
    for i, rule in enumerate(data.get("rules") or []):
        for key in ("when", "unless"):
            cidrs = (rule.get(key) or {}).get("client_ip")
            if isinstance(cidrs, list):
                yield from (
                    (("rules", i, key, "client_ip", j), str(c)) for j, c in enumerate(cidrs)
                )
            elif cidrs is not None:
                yield ("rules", i, key, "client_ip"), str(cidrs)


def _pattern_domain(pattern: str) -> str | None:
    if pattern.startswith("re:") or "*" in pattern or "?" in pattern:
        return None
    return pattern.rpartition("@")[2].lower().lstrip(".")


def _within(domain: str, domains: set[str]) -> bool:
    return any(domain == d or domain.endswith("." + d) for d in domains)


def describe_path(path: Path_) -> str:
    return format_path(path)
