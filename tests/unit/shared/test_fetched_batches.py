"""The batching runner hands a projection what its subscription has already fetched, at once, up to
the limit, and never waits for more: a lone event is a batch of its own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from shared.feed import MAX_BATCH_EVENTS, fetched_batches


class FetchedPages:
    """The recorder's subscription: pages arrive one after the other; within a page, everything
    after the first event is already fetched. With `stops_early`, it stops before its last event
    although it claimed it was fetched (as when the runner is stopped meanwhile)."""

    def __init__(self, pages: list[list[str]], *, stops_early: bool = False) -> None:
        self._pages = [list(page) for page in pages]
        self._stops_early = stops_early

    def has_ready(self) -> bool:
        return bool(self._pages and self._pages[0])

    def take(self) -> str:
        while self._pages and not self._pages[0]:
            self._pages.pop(0)
        if not self._pages or (self._stops_early and sum(map(len, self._pages)) == 1):
            raise StopIteration
        return self._pages[0].pop(0)


class ApplicationEvents(Iterator[tuple[str, Any]]):
    """What the runner iterates (the library's ApplicationSubscription): events with positions."""

    def __init__(self, pages: FetchedPages) -> None:
        self.subscription = pages

    def __next__(self) -> tuple[str, Any]:
        return self.subscription.take(), None


def batches_of(pages: FetchedPages) -> list[list[str]]:
    """The events of each batch the runner makes of `pages`."""
    batches = fetched_batches(ApplicationEvents(pages))  # type: ignore[arg-type]
    return [[event for event, _ in batch] for batch in batches]


def test_what_is_fetched_goes_together_and_a_lone_event_alone() -> None:
    pages = FetchedPages([["a", "b", "c"], ["d"], ["e", "f"]])
    assert batches_of(pages) == [["a", "b", "c"], ["d"], ["e", "f"]]


def test_a_batch_holds_at_most_the_limit() -> None:
    page = [str(n) for n in range(MAX_BATCH_EVENTS + 2)]
    assert batches_of(FetchedPages([page])) == [page[:MAX_BATCH_EVENTS], page[MAX_BATCH_EVENTS:]]


def test_what_was_gathered_is_still_handed_over_when_the_subscription_stops() -> None:
    assert batches_of(FetchedPages([["a", "b", "c"]], stops_early=True)) == [["a", "b"]]
