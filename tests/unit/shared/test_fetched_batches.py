"""The batching runner hands a projection what its subscription has already fetched, at once, up to
the limit, and never waits for more: a lone event is a batch of its own."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from shared.feed import MAX_BATCH_EVENTS, fetched_batches
from shared.subscriptions import BufferedSubscription


@dataclass(frozen=True)
class Note:
    """A notification, as far as batching is concerned."""

    id: int


class FetchedPages(BufferedSubscription):
    """A recorder's subscription, as the library's ListenNotifySubscription keeps it: the page being
    iterated, and the pages its pull thread has fetched since, queued. Once all are taken, it
    stops (as when the runner is stopped)."""

    def __init__(self, *pages: list[int]) -> None:
        self._notifications: list[Note] = []
        self._notifications_index = 0
        self._notifications_queue: queue.Queue[list[Note]] = queue.Queue()
        for page in pages:
            self._notifications_queue.put([Note(n) for n in page])

    def __next__(self) -> Note:
        if self._notifications_index == len(self._notifications):
            if self._notifications_queue.empty():
                raise StopIteration
            self._notifications, self._notifications_index = self._notifications_queue.get(), 0
        self._notifications_index += 1
        return self._notifications[self._notifications_index - 1]

    def ids(self, limit: int) -> list[int]:
        return [note.id for note in self.take_fetched(limit)]


def test_take_fetched_takes_the_rest_of_the_page_and_the_pages_fetched_since() -> None:
    pages = FetchedPages([1, 2, 3], [4], [5, 6])
    assert pages.ids(10) == [1, 2, 3, 4, 5, 6]
    with pytest.raises(StopIteration):
        pages.take_fetched(10)


def test_take_fetched_takes_up_to_the_limit_within_and_across_pages() -> None:
    pages = FetchedPages([1, 2, 3, 4, 5], [6, 7])
    assert [pages.ids(2), pages.ids(2), pages.ids(2), pages.ids(2)] == [[1, 2], [3, 4], [5, 6], [7]]


class Mapper:
    def to_domain_event(self, note: Note) -> str:
        return f"event {note.id}"


@dataclass
class ApplicationEvents(Iterator[tuple[str, Any]]):
    """What the runner iterates (the library's ApplicationSubscription): events with positions."""

    subscription: Any
    name: str = "upstream"
    mapper: Mapper = field(default_factory=Mapper)

    def __next__(self) -> tuple[str, Any]:
        return self.mapper.to_domain_event(next(self.subscription)), None


def batches_of(subscription: Any) -> list[list[tuple[str, int]]]:
    """The events (with their positions) of each batch the runner makes of `subscription`."""
    batches = fetched_batches(ApplicationEvents(subscription))
    return [[(event, tracking.notification_id) for event, tracking in batch] for batch in batches]


def test_what_is_fetched_goes_together_decoded_with_its_positions() -> None:
    assert batches_of(FetchedPages([1, 2], [3])) == [[("event 1", 1), ("event 2", 2), ("event 3", 3)]]


def test_a_batch_holds_at_most_the_limit() -> None:
    page = list(range(1, MAX_BATCH_EVENTS + 3))
    assert [len(batch) for batch in batches_of(FetchedPages(page))] == [MAX_BATCH_EVENTS, 2]


def test_a_subscription_that_cannot_tell_what_is_fetched_gives_batches_of_one() -> None:
    class Unbuffered(Iterator[Note]):
        def __init__(self) -> None:
            self._notes = iter([Note(1), Note(2)])

        def __next__(self) -> Note:
            return next(self._notes)

    assert [[event for event, _ in batch] for batch in fetched_batches(ApplicationEvents(Unbuffered()))] == [
        ["event 1"],
        ["event 2"],
    ]
