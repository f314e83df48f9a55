"""What the library's event subscriptions do not offer: taking every notification already fetched at once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import Notification


class BufferedSubscription:
    """Mixed in (first) into the library's ListenNotifySubscription subclasses: a batching projection
    runner (shared/feed.py) adds to its batch what is already fetched, without waiting for more."""

    _notifications: Sequence[Notification]
    _notifications_index: int
    _notifications_queue: Any

    def take_fetched(self, limit: int) -> list[Notification]:
        """The next notification (waiting for it), then those already fetched after it, up to `limit`
        in all. Raises StopIteration once the subscription has stopped, as iterating it does."""
        taken = [next(self)]  # type: ignore[call-overload]
        while len(taken) < limit:
            end = self._notifications_index + limit - len(taken)
            page_rest = self._notifications[self._notifications_index : end]
            self._notifications_index += len(page_rest)
            taken += page_rest
            if len(taken) == limit or self._notifications_queue.empty():
                break
            try:
                taken.append(next(self))  # type: ignore[call-overload]  # the next page, fetched already
            except StopIteration:
                break
        return taken
