"""The rule sets the SES handler runs, each loaded, checked and compiled once per process:
the file at `INBOUND_RULES`, or the one a receiver of `inbound serve --spool s3://` stored at
PREFIX + rules/DIGEST.yaml and named by digest in the notification (SPEC 7b).

SES receipts carry no client IP or TLS facts, so a rule set whose enabled rules have conditions
on them is refused here (`SesRuleSetError`), and `connection_issues` lets a receiver whose mail
goes to the consumers refuse it at start; SES applied its own IP filters, so the YAML's are
dropped.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from pathlib import Path
from typing import Any

from inbound.core.errors import ConfigError, ConfigIssue, InboundError
from inbound.core.message import Reads
from inbound.message.notification import DIGEST_ATTRIBUTE
from inbound.rules.book import digest_of
from inbound.rules.compiled import CompiledRuleSet
from inbound.rules.condition_table import CONDITIONS
from inbound.rules.load import LoadedRuleSet, environment_issues, load_rule_set, parse_rule_set
from inbound.ses.event import SesEventError

# The conditions that read the SMTP session (a view of the condition table).
CONNECTION_KEYS = CONDITIONS.keys_reading(Reads.CONNECTION)


class SesConfigError(InboundError):
    """The handler's environment is incomplete (`INBOUND_RULES`, no bucket for the message)."""


class SesRuleSetError(InboundError):
    """The rule set uses conditions that cannot be evaluated against SES receipts."""


_lock = threading.Lock()
_rules: dict[str, CompiledRuleSet] = {}
# Held while a rule set is read and compiled: `ses consume --concurrency N` threads that all
# need a new one wait for one read, not N.
_loading = threading.Lock()


def clear_rules() -> None:
    with _lock:
        _rules.clear()


def rules_at(path: str) -> CompiledRuleSet:
    """The rule set at `path`, loaded and checked once per container."""
    with _lock:
        cached = _rules.get(path)
    if cached is not None:
        return cached
    with _loading:
        with _lock:
            cached = _rules.get(path)
        if cached is not None:
            return cached
        compiled = _usable(load_rule_set(Path(path)), path)
        with _lock:
            _rules[path] = compiled
    return compiled


def rules_by_digest(s3: Any, bucket: str, prefix: str, digest: str) -> CompiledRuleSet:
    """The rule set a receiver of `inbound serve --spool s3://` stored for the message at
    PREFIX + rules/DIGEST.yaml (SPEC 7b), read and checked once per process."""
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise SesEventError(f"message attribute {DIGEST_ATTRIBUTE} {digest!r} is not a digest")
    with _lock:
        cached = _rules.get(digest)
    if cached is not None:
        return cached
    with _loading:
        return _read_by_digest(s3, bucket, prefix, digest)


def _read_by_digest(s3: Any, bucket: str, prefix: str, digest: str) -> CompiledRuleSet:
    with _lock:
        cached = _rules.get(digest)
    if cached is not None:
        return cached  # read while this one waited
    key = f"{prefix}rules/{digest}.yaml"
    try:
        text = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
    except Exception as exc:  # botocore's errors: the rule set missing, a denied read, ...
        raise SesConfigError(f"cannot read the rule set s3://{bucket}/{key}: {exc}") from exc
    if digest_of(text) != digest:
        raise SesConfigError(f"s3://{bucket}/{key}: its content does not have that digest")
    compiled = _usable(parse_rule_set(text, f"s3://{bucket}/{key}"), f"s3://{bucket}/{key}")
    with _lock:
        _rules[digest] = compiled
    return compiled


def _usable(loaded: LoadedRuleSet, path: str) -> CompiledRuleSet:
    """`loaded` compiled for SES receipts, or the reason it cannot be used for them."""
    if issues := environment_issues(loaded, os.environ):
        raise ConfigError(issues)  # a webhook's secret_env not set in the function's environment
    compiled = CompiledRuleSet.build(loaded.rule_set)
    unusable = [
        f"{rule.name} ({', '.join(sorted(keys))})"
        for rule in compiled.rules
        if rule.enabled and (keys := _used_keys(rule.model) & CONNECTION_KEYS)
    ]
    if unusable:
        raise SesRuleSetError(
            f"{path}: SES receipts carry no client IP or TLS facts, so these rules' conditions "
            f"cannot be evaluated: {'; '.join(unusable)}"
        )
    # SES applied its own IP filters when it accepted the connection.
    return dataclasses.replace(compiled, filters=())


def connection_issues(loaded: LoadedRuleSet) -> list[ConfigIssue]:
    """Enabled rules whose conditions read the SMTP session, at their positions: what a
    consumer cannot evaluate (`inbound serve --spool s3://` refuses such a rule set)."""
    return [
        loaded.source.issue(
            ("rules", i),
            f"conditions on {', '.join(sorted(keys))} cannot be "
            "evaluated by `inbound ses consume` (no connection facts): use receipt filters",
        )
        for i, rule in enumerate(loaded.rule_set.rules)
        if rule.enabled and (keys := _used_keys(rule) & CONNECTION_KEYS)
    ]


def _used_keys(rule: Any) -> set[str]:
    keys: set[str] = set()
    for conditions in (rule.when, rule.unless):
        if conditions is not None:
            keys.update(conditions.used())
    return keys
