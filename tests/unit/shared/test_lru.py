"""The bounded map behind remembered tokens and remembered PDF checks."""

from __future__ import annotations

import time

from shared.auth import Principal, Role
from shared.lru import LruMap


def test_the_least_recently_used_token_is_forgotten_first() -> None:
    remembered: LruMap[str, tuple[Principal, float]] = LruMap(capacity=2)
    principal = Principal(sub="u", role=Role.STAFF)
    until = time.time() + 60
    remembered.put("a", (principal, until))
    remembered.put("b", (principal, until))
    assert remembered.get("a") is not None  # now "b" is the least recently used
    remembered.put("c", (principal, until))
    assert (remembered.get("a"), remembered.get("b"), remembered.get("c")) == (
        (principal, until),
        None,
        (principal, until),
    )


def test_a_map_of_no_capacity_keeps_nothing() -> None:
    remembered: LruMap[str, int] = LruMap(capacity=0)
    remembered.put("a", 1)
    assert remembered.get("a") is None
