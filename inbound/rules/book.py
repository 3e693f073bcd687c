"""The rule set in force, reloadable, plus older versions for messages received under them.

A message is evaluated against the rule set loaded when it was received (SPEC section 2):
every loaded text is stored by its SHA-256 digest, the message records the digest, and the
dispatcher asks for that snapshot, even after a reload or a restart.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from inbound.core.errors import ConfigError, ConfigIssue
from inbound.rules.compiled import CompiledRuleSet
from inbound.rules.load import LoadedRuleSet, parse_rule_set, read_text


@dataclass(frozen=True, slots=True)
class RuleSnapshot:
    digest: str
    compiled: CompiledRuleSet
    # What `inbound check` would warn about (a CIDR with host bits, a domain listed twice),
    # as it prints them: `serve` logs them when it loads the rules, as `check` prints them.
    warnings: tuple[str, ...] = ()


def digest_of(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class RuleBook:
    def __init__(
        self,
        path: Path,
        *,
        save_text: Callable[[str], str],
        load_text: Callable[[str], str],
        extra_domains: Sequence[str] = (),
        check: Callable[[LoadedRuleSet], list[ConfigIssue]] | None = None,
    ) -> None:
        """`save_text` stores a rule-set text and returns its digest; `load_text` reads it back.
        `check` finds what makes a valid file unusable here (an unset `secret_env`): its
        issues fail the load, as errors in the file do."""
        self.path = path
        self._check = check
        self._save_text = save_text
        self._load_text = load_text
        self._extra_domains = tuple(extra_domains)
        self._check = check
        self._lock = threading.Lock()
        self._snapshots: dict[str, RuleSnapshot] = {}
        self.current = self.reload()

    def reload(self) -> RuleSnapshot:
        """Load the file again; on any error raise it and keep the rules in force."""
        text = read_text(self.path)
        loaded = parse_rule_set(text, str(self.path), extra_domains=self._extra_domains)
        if self._check is not None and (issues := self._check(loaded)):
            raise ConfigError(issues)
        compiled = CompiledRuleSet.build(loaded.rule_set)
        digest = self._save_text(text)
        snapshot = RuleSnapshot(digest, compiled, tuple(str(w) for w in loaded.warnings))
        with self._lock:
            self._snapshots[digest] = snapshot
            self.current = snapshot
        return snapshot

    def snapshot(self, digest: str) -> RuleSnapshot:
        """The rules a message was received with."""
        with self._lock:
            found = self._snapshots.get(digest)
        if found is not None:
            return found
        text = self._load_text(digest)
        snapshot = RuleSnapshot(digest, self._compile(text, f"{self.path} (version {digest[:12]})"))
        with self._lock:
            self._snapshots[digest] = snapshot
        return snapshot

    def _compile(self, text: str, file: str) -> CompiledRuleSet:
        loaded = parse_rule_set(text, file, extra_domains=self._extra_domains)
        return CompiledRuleSet.build(loaded.rule_set)
