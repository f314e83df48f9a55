"""The batching runner takes (so decodes) batches in a thread of its own, ahead of the projection:
same events in the same order, batches that waited go together up to the limit, an error comes
after the batches before it, and closing stops the thread."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from shared.feed import MAX_BATCH_EVENTS, DecodedAhead

WAIT_S = 5.0


def gated(batches: list[list[Any]], taken: threading.Event, go_on: threading.Event) -> Iterator[list[Any]]:
    """`batches`, but before the last one, says that the others were taken and waits."""
    *first, last = batches
    yield from first
    taken.set()
    assert go_on.wait(WAIT_S)
    yield last


def test_batches_that_waited_go_together_in_order() -> None:
    taken, go_on = threading.Event(), threading.Event()
    ahead = DecodedAhead(gated([["a"], ["b"], ["c"]], taken, go_on))
    assert taken.wait(WAIT_S)  # ["a"] and ["b"] are waiting
    assert next(ahead) == ["a", "b"]
    go_on.set()
    assert list(ahead) == [["c"]]


def test_batches_go_together_up_to_the_limit_only() -> None:
    taken, go_on = threading.Event(), threading.Event()
    full = [str(n) for n in range(MAX_BATCH_EVENTS - 1)]
    ahead = DecodedAhead(gated([full, ["x", "y"], ["z"]], taken, go_on))
    assert taken.wait(WAIT_S)
    assert next(ahead) == full
    go_on.set()
    assert list(ahead) in ([["x", "y", "z"]], [["x", "y"], ["z"]])  # ["z"] may come in time to join


def test_an_error_comes_after_the_batches_before_it() -> None:
    def failing() -> Iterator[list[str]]:
        yield ["a"]
        raise RuntimeError("subscription lost")

    ahead = DecodedAhead(failing())
    assert next(ahead) == ["a"]
    with pytest.raises(RuntimeError, match="subscription lost"):
        next(ahead)


def test_closing_stops_taking_ahead() -> None:
    source = ([n] for n in itertools.count())
    ahead = DecodedAhead(source)
    assert next(ahead)[0] == 0  # with those that came meanwhile
    ahead.close()
    ahead._thread.join(WAIT_S)
    assert not ahead._thread.is_alive()
