"""Message IDs: 40 characters of [0-9a-z], unique, ordered by time (SPEC section 5)."""

from __future__ import annotations

import re
import threading

from inbound.core.ids import MessageIdGenerator, is_message_id


def test_shape_matches_ses() -> None:
    message_id = MessageIdGenerator().next()
    assert re.fullmatch(r"[0-9a-z]{40}", message_id)
    assert is_message_id(message_id)
    assert not is_message_id(message_id.upper())
    assert not is_message_id(message_id[:-1])


def test_unique_and_sorted_in_generation_order() -> None:
    ids = MessageIdGenerator()
    made = [ids.next() for _ in range(50_000)]
    assert len(set(made)) == len(made)
    assert made == sorted(made)


def test_unique_across_threads() -> None:
    ids = MessageIdGenerator()
    made: list[list[str]] = [[] for _ in range(4)]

    def work(out: list[str]) -> None:
        out.extend(ids.next() for _ in range(5_000))

    threads = [threading.Thread(target=work, args=(out,)) for out in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [i for out in made for i in out]
    assert len(set(everything)) == len(everything)
    for out in made:
        assert out == sorted(out)


def test_two_generators_order_by_millisecond() -> None:
    first = MessageIdGenerator().next()
    second = MessageIdGenerator().next()
    assert first[:10] <= second[:10]
