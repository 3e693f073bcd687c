"""Read YAML into plain data plus a source map (path -> line:col) for error messages.

PyYAML's node tree carries positions; we build the data ourselves so that duplicate keys,
YAML 1.1 surprises (`off` read as false, `0550` read as 360) and non-string keys become
errors with a position instead of silent changes. Nothing here knows about rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

from inbound.config.yamlerrors import syntax_issue
from inbound.core.errors import ConfigError, ConfigIssue

Path_ = tuple[str | int, ...]

_TAG = "tag:yaml.org,2002:"
_PLAIN_NUMBER = re.compile(r"[-+]?(0|[1-9][0-9]*)(\.[0-9]*)?([eE][-+]?[0-9]+)?|[-+]?\.[0-9]+")
_PLAIN_BOOL = {"true", "false"}
# A rule file is small; this bounds alias expansion ("billion laughs").
_MAX_NODES = 2_000_000


@dataclass(frozen=True, slots=True)
class Position:
    line: int
    column: int


@dataclass
class SourceMap:
    """Positions of every value and every mapping key, by their path in the data."""

    file: str
    values: dict[Path_, Position] = field(default_factory=dict)
    keys: dict[Path_, Position] = field(default_factory=dict)
    # For data translated from another shape (SES JSON): our path -> the path as written.
    aliases: dict[Path_, Path_] = field(default_factory=dict)

    def display(self, path: Path_) -> Path_:
        """`path` as the user wrote it: translated through the longest aliased prefix."""
        for end in range(len(path), 0, -1):
            alias = self.aliases.get(path[:end])
            if alias is not None:
                return alias + path[end:]
        return path

    def value_at(self, path: Path_) -> Position:
        """The position of the value at `path`, or of its nearest known ancestor."""
        for end in range(len(path), -1, -1):
            found = self.values.get(path[:end])
            if found is not None:
                return found
        return Position(1, 1)

    def key_at(self, path: Path_) -> Position:
        return self.keys.get(path) or self.value_at(path)

    def issue(self, path: Path_, message: str, *, at_key: bool = False) -> ConfigIssue:
        pos = self.key_at(path) if at_key else self.value_at(path)
        return ConfigIssue(
            self.file, pos.line, pos.column, format_path(self.display(path)), message
        )


def format_path(path: Path_) -> str:
    """`('rules', 0, 'actions', 1, 'bucket')` -> `rules[0].actions[1].bucket`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _position(node: yaml.Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


class _Builder:
    def __init__(self, source: SourceMap) -> None:
        self.source = source
        self.issues: list[ConfigIssue] = []
        self.nodes = 0

    def error(self, node: yaml.Node, path: Path_, message: str) -> None:
        pos = _position(node)
        self.issues.append(
            ConfigIssue(self.source.file, pos.line, pos.column, format_path(path), message)
        )

    def build(self, node: yaml.Node, path: Path_) -> object:
        self.nodes += 1
        if self.nodes > _MAX_NODES:
            raise ConfigError([self.source.issue((), "document too large (alias expansion?)")])
        self.source.values[path] = _position(node)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path)
        self.error(node, path, "unsupported YAML node")  # pragma: no cover - PyYAML has 3 kinds
        return None

    def mapping(self, node: yaml.MappingNode, path: Path_) -> dict[str, object]:
        out: dict[str, object] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                self.error(key_node, path, "merge keys ('<<') are not supported")
                continue
            key = self.scalar(key_node, path) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                self.error(key_node, path, f"key {shown!r} must be a string; quote it")
                continue
            child = (*path, key)
            if key in out:
                first = self.source.keys[child]
                self.error(
                    key_node,
                    child,
                    f"duplicate key {key!r} (first defined at line {first.line})",
                )
                continue
            self.source.keys[child] = _position(key_node)
            out[key] = self.build(value_node, child)
        return out

    def scalar(self, node: yaml.ScalarNode, path: Path_) -> object:
        text: str = node.value
        if node.style in ("'", '"', "|", ">"):
            return text
        tag = node.tag.removeprefix(_TAG)
        if tag == "str":
            return text
        if tag == "null":
            return None
        if tag == "bool":
            if text.lower() in _PLAIN_BOOL:
                return text.lower() == "true"
            meaning = "true" if yaml.safe_load(text) else "false"
            self.error(
                node,
                path,
                f"{text!r} is read as {meaning} by YAML 1.1: "
                "write true or false for a flag, or quote it for text",
            )
            return text
        if tag in ("int", "float") and (":" in text or not _PLAIN_NUMBER.fullmatch(text)):
            value = yaml.safe_load(text)
            self.error(node, path, f"{text!r} is read as the number {value} by YAML 1.1; quote it")
            return text
        if tag == "int":
            return int(text)
        if tag == "float":
            return float(text)
        if tag == "timestamp":
            return text
        self.error(node, path, f"unsupported YAML tag {node.tag!r}")
        return text


def load_yaml(text: str, file: str) -> tuple[object, SourceMap]:
    """Parse one YAML document; raise `ConfigError` with every problem found."""
    data, source, issues = parse_yaml(text, file)
    if issues:
        raise ConfigError(issues)
    return data, source


def parse_yaml(text: str, file: str) -> tuple[object, SourceMap, list[ConfigIssue]]:
    """Parse one YAML document, returning the problems that still let us build data.

    A YAML 1.1 surprise or a duplicate key leaves the value as written, so a validator can go
    on and report the rest of the file; syntax errors raise `ConfigError`.
    """
    source = SourceMap(file)
    try:
        documents = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([syntax_issue(exc, file)]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(file, 1, 1, "", f"invalid YAML: {exc}")]) from exc
    if len(documents) > 1:
        raise ConfigError([source.issue((), "expected one YAML document, found several")])
    if not documents or documents[0] is None:
        raise ConfigError([ConfigIssue(file, 1, 1, "", "the file is empty")])
    builder = _Builder(source)
    data = builder.build(documents[0], ())
    return data, source, builder.issues
