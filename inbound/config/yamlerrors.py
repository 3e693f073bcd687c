"""PyYAML's syntax errors in words a rule-file author can act on, with the position.

PyYAML reports what its scanner and parser expected ("expected <block end>, but found '?'");
this module says what is wrong in the file instead ("this line is indented differently from
the lines above it"), at the mark that helps: where a quote or bracket was opened when it is
never closed, else where the problem was found. Anything not recognised keeps PyYAML's text.
"""

from __future__ import annotations

import re

import yaml

from inbound.core.errors import ConfigIssue

_BAD_START = re.compile(r"found character '(.+)' that cannot start any token")
_BAD_ESCAPE = re.compile(r"found unknown escape character '?(.+?)'?$")
_ALIAS = re.compile(r"found undefined alias '(.+)'")
_CLOSERS = {"flow sequence": ("list", "[", "]"), "flow mapping": ("mapping", "{", "}")}


def syntax_issue(exc: yaml.MarkedYAMLError, file: str) -> ConfigIssue:
    """One issue for a YAML syntax error: FILE:LINE:COL and what is wrong, in words."""
    problem = exc.problem or ""
    context = exc.context or ""
    found = exc.problem_mark or exc.context_mark
    opened = exc.context_mark or found
    at, message = found, f"invalid YAML: {problem or context or 'syntax error'}"
    if match := _BAD_START.fullmatch(problem):
        char = match.group(1)
        if char == "\\t":
            message = "a tab character cannot indent YAML; use spaces"
        else:
            message = f"a value cannot start with {char!r} in YAML; put the value in quotes"
    elif context.endswith("quoted scalar") and "end of stream" in problem:
        at, message = opened, "this quoted string is never closed (a missing quote?)"
    elif context.endswith("quoted scalar") and "end of stream" not in problem:
        if match := _BAD_ESCAPE.search(problem):
            message = (
                f"'\\{match.group(1)}' is not an escape in a double-quoted string; "
                "use single quotes for backslashes (as in regular expressions)"
            )
    elif kind := next((k for k in _CLOSERS if context.endswith(k)), None):
        what, opener, closer = _CLOSERS[kind]
        where = f"line {opened.line + 1} column {opened.column + 1}" if opened else "above"
        message = (
            f"the {what} opened with {opener!r} at {where} is not closed here: "
            f"expected ',' or {closer!r} (a missing {closer!r} or comma?)"
        )
    elif problem == "mapping values are not allowed here":
        message = (
            "unexpected ':' here: quote a value that contains ': ', "
            "or indent this line like the key above it"
        )
    elif problem.startswith("expected <block end>"):
        block = opened.column + 1 if opened else 1
        message = (
            "this line is indented differently from the lines above it "
            f"(the block it is in starts at column {block}): indent it with spaces to match"
        )
    elif problem == "could not find expected ':'":
        at, message = opened, "expected 'key: value' here (a key without ':'?)"
    elif match := _ALIAS.fullmatch(problem):
        name = match.group(1)
        message = f"'*{name}' refers to an anchor '&{name}' that is not defined before it"
    line, column = (at.line + 1, at.column + 1) if at else (1, 1)
    return ConfigIssue(file, line, column, "", message)
