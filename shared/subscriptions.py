"""What the library's event subscriptions do not tell: whether the next event is already fetched."""

from __future__ import annotations

from typing import Any


class BufferedSubscription:
    """Mixed in (first) into the library's ListenNotifySubscription subclasses: a batching projection
    runner (shared/feed.py) adds events to its open transaction while taking them does not wait."""

    _notifications: Any
    _notifications_index: int
    _notifications_queue: Any

    def has_ready(self) -> bool:
        return self._notifications_index < len(self._notifications) or not self._notifications_queue.empty()
