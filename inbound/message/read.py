"""Facts of a message on disk, reading only as much as the rules need, in one streaming pass.

Header conditions need the header block only; attachment conditions need every part's header
block, which the walk of `inbound.message.mime` reads in chunks without keeping any body, so a
40 MB message costs a chunk and a header block of memory however it is built.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from inbound.core.message import MessageFacts, MimeLimits
from inbound.message.parse import facts_from

Need = Literal["nothing", "headers", "everything"]


def need_for(keys: frozenset[str]) -> Need:
    if "attachment" in keys:
        return "everything"
    return "headers" if keys else "nothing"


def read_facts(
    path: Path,
    need: Need,
    limits: MimeLimits | None = None,
    *,
    stop: Callable[[], bool] | None = None,
) -> MessageFacts:
    """The facts of the message at `path`; `stop()` true between two chunks raises
    `WalkCancelled` (a shutdown)."""
    size = path.stat().st_size
    if need == "nothing":
        return MessageFacts(size=size)
    with path.open("rb") as stream:
        return facts_from(
            stream, size, limits or MimeLimits(), headers_only=need == "headers", stop=stop
        )
