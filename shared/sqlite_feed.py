"""The embedded (SQLite) persistence module, with the subscriptions the library's SQLite recorder lacks.

Selected with PERSISTENCE_MODULE=shared.sqlite_feed:Factory. Subscriptions poll the events table, and
are woken at once when an event is written through any recorder of the same database file in
this process, so that projections and the notifier run the same way in both modes.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import ListenNotifySubscription, StoredEvent, Subscription
from eventsourcing.sqlite import (
    SQLiteApplicationRecorder,
    SQLiteFactory,
    SQLiteProcessRecorder,
)
from eventsourcing.utils import Environment, EnvType

from shared.subscriptions import BufferedSubscription

POLL_INTERVAL_KEY = "SQLITE_POLL_INTERVAL"
DEFAULT_POLL_INTERVAL_S = 0.1

_subscriptions_by_db: dict[str, weakref.WeakSet[PollingSubscription]] = {}
_registry_lock = threading.Lock()


class PollingSubscription(BufferedSubscription, ListenNotifySubscription[SQLiteApplicationRecorder]):
    """Pulls new notifications every `interval` seconds, or sooner when woken."""

    def __init__(
        self,
        recorder: SQLiteApplicationRecorder,
        gt: int | None = None,
        topics: Sequence[str] = (),
        *,
        interval: float = DEFAULT_POLL_INTERVAL_S,
    ) -> None:
        self._interval = interval
        self._stopped = threading.Event()
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._ticker = threading.Thread(target=self._tick, name="sqlite-poll", daemon=True)
        self._ticker.start()

    def wake(self) -> None:
        self._has_been_notified.set()

    def _tick(self) -> None:
        while not self._stopped.wait(self._interval):
            self._has_been_notified.set()

    def stop(self) -> None:
        self._stopped.set()
        super().stop()


class _PollingSubscribeMixin:
    """Adds subscribe() to a SQLite recorder and wakes local subscribers after each write."""

    poll_interval: float = DEFAULT_POLL_INTERVAL_S

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> Subscription[Any]:
        subscription = PollingSubscription(
            self,  # type: ignore[arg-type]
            gt=gt,
            topics=topics,
            interval=self.poll_interval,
        )
        with _registry_lock:
            _subscriptions_by_db.setdefault(self._db_key(), weakref.WeakSet()).add(subscription)
        return subscription

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        notification_ids = super().insert_events(stored_events, **kwargs)  # type: ignore[misc]
        with _registry_lock:
            subscribers = list(_subscriptions_by_db.get(self._db_key(), ()))
        for subscription in subscribers:
            subscription.wake()
        return notification_ids

    def _db_key(self) -> str:
        return str(self.datastore.pool.db_name)  # type: ignore[attr-defined]


class PollingApplicationRecorder(_PollingSubscribeMixin, SQLiteApplicationRecorder):
    pass


class PollingProcessRecorder(_PollingSubscribeMixin, SQLiteProcessRecorder):
    pass


class Factory(SQLiteFactory):
    application_recorder_class = PollingApplicationRecorder
    process_recorder_class = PollingProcessRecorder

    def __init__(self, env: Environment | EnvType | None):
        super().__init__(env)
        self.poll_interval = float(self.env.get(POLL_INTERVAL_KEY) or DEFAULT_POLL_INTERVAL_S)

    def application_recorder(self) -> Any:
        recorder = super().application_recorder()
        recorder.poll_interval = self.poll_interval
        return recorder

    def process_recorder(self) -> Any:
        recorder = super().process_recorder()
        recorder.poll_interval = self.poll_interval
        return recorder
