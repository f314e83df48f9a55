"""The production (PostgreSQL) persistence module: the library's, with group commit, schema changes
that take turns across processes, and subscriptions that tell a batching projection runner what
is already fetched.

Selected with PERSISTENCE_MODULE=shared.postgres_store:Factory (see shared/eventstore.py).

The library serialises inserts with a table lock held until COMMIT, so that notification ids
commit in id order and a tailing projection never skips an event. The lock is held while the
commit waits for its WAL flush: one flush per command, so about 1/fsync commands per second
whatever the concurrency. Here, saves that arrive while a commit is in flight queue up, and the
next commit takes all of them: one lock, one flush, many commands. Order is still kept: each
batch is one statement calling a function that takes the same table lock, held until that
statement's commit (unlike POSTGRES_ENABLE_DB_FUNCTIONS, whose function takes no lock and
lets ids commit out of order).

A version conflict (two commands on one aggregate in one batch) fails the batch's transaction;
its saves are then committed one by one, so only the conflicting one gets the IntegrityError
that the application answers by retrying its command.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    StoredEvent,
    Subscription,
)
from eventsourcing.postgres import (
    PostgresApplicationRecorder,
    PostgresFactory,
    PostgresProcessRecorder,
    PostgresSubscription,
    PostgresTrackingRecorder,
)
from eventsourcing.utils import retry
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

from shared.subscriptions import BufferedSubscription


class _PendingSave:
    """One caller's events, waiting for the commit that includes them."""

    __slots__ = ("done", "error", "events", "ids")

    def __init__(self, events: Sequence[StoredEvent]) -> None:
        self.events = events
        self.ids: Sequence[int] | None = None
        self.error: Exception | None = None
        self.done = False


# Any fixed number: the advisory lock that schema changes of every process take turns on.
SCHEMA_LOCK_KEY = 7_246_118_091


class SerialisedSchemaChanges:
    """Mixed in (first) into PostgreSQL recorders. Processes that start together (server workers,
    replicas, workers) create the same tables and functions, and PostgreSQL fails concurrent
    CREATE OR REPLACE FUNCTION ("tuple concurrently updated"): each takes its turn."""

    def _create_table(self, curs: Cursor[DictRow]) -> None:
        curs.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        super()._create_table(curs)  # type: ignore[misc]


class BufferedPostgresSubscription(BufferedSubscription, PostgresSubscription):
    """The library's subscription pulls once before its LISTEN is in place: an event committed in
    between waits for the next notification, for good on a quiet upstream (seen: the audit of
    certificate downloads stalled). So pull again once LISTEN is in place, and every
    `RESWEEP_S` as a safety net against any notification lost on the way."""

    def _listen(self) -> None:
        try:
            with self._recorder.datastore.get_connection() as conn:
                conn.execute(SQL("LISTEN {0}").format(Identifier(self._recorder.channel_name)))
                self._has_been_notified.set()
                swept_at = time.monotonic()
                while not self._has_been_stopped and not self._thread_error:
                    for _ in conn.notifies(timeout=0.1, stop_after=1):
                        self._has_been_notified.set()
                    if time.monotonic() - swept_at >= RESWEEP_S:
                        self._has_been_notified.set()
                        swept_at = time.monotonic()
        except BaseException as error:  # as the library's: the runner re-raises it and the supervisor restarts
            if self._thread_error is None:
                self._thread_error = error
            self.stop()


RESWEEP_S = 1.0


class GroupCommitApplicationRecorder(SerialisedSchemaChanges, PostgresApplicationRecorder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queue: list[_PendingSave] = []
        self._queue_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        # The library's locked insert, as one statement: the lock is held until the statement's own
        # commit, so ids still commit in id order, and there is one round trip instead of the
        # library's pipeline (whose waits keep the GIL busy while the commit is flushed).
        self.locked_insert_function = f"{self.events_table_name}_insert_locked"
        self.check_identifier_length(self.locked_insert_function)
        self.sql_create_statements.append(
            SQL(
                "CREATE OR REPLACE FUNCTION {schema}.{function}(events {schema}.{event}[]) "
                "RETURNS SETOF bigint LANGUAGE plpgsql AS $BODY$ "
                "BEGIN "
                "SET LOCAL lock_timeout = '{lock_timeout}s'; "
                "LOCK TABLE {schema}.{table} IN EXCLUSIVE MODE; "
                "NOTIFY {channel}; "
                "RETURN QUERY INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state) "
                "SELECT originator_id, originator_version, topic, state FROM unnest(events) "
                "RETURNING notification_id; "
                "END; $BODY$"
            ).format(
                schema=Identifier(self.datastore.schema),
                function=Identifier(self.locked_insert_function),
                event=Identifier(self.stored_event_type_name),
                lock_timeout=self.datastore.lock_timeout,
                table=Identifier(self.events_table_name),
                channel=Identifier(self.channel_name),
            )
        )
        self.sql_locked_insert = SQL("SELECT * FROM {schema}.{function}(%s)").format(
            schema=Identifier(self.datastore.schema), function=Identifier(self.locked_insert_function)
        )

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> Subscription[Any]:
        """Lets a batching projection runner see what is already fetched (shared/feed.py)."""
        return BufferedPostgresSubscription(recorder=self, gt=gt, topics=topics)

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        if not stored_events or kwargs.get("tracking") is not None:  # not a plain save: nothing to group
            return super().insert_events(stored_events, **kwargs)
        pending = _PendingSave(stored_events)
        with self._queue_lock:
            self._queue.append(pending)
        # Whoever gets the commit lock commits everything queued so far, maybe ours too.
        with self._commit_lock:
            if not pending.done:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._commit(batch)
        if pending.error is not None:
            # A fresh exception per caller: several threads may raise what one commit raised.
            raise type(pending.error)(*pending.error.args) from pending.error
        return pending.ids

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def _insert_locked(self, stored_events: Sequence[StoredEvent]) -> list[int]:
        events = [
            self.construct_pg_stored_event(e.originator_id, e.originator_version, e.topic, e.state)
            for e in stored_events
        ]
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self.sql_locked_insert, (events,), prepare=True)
            return [row[self.locked_insert_function] for row in curs.fetchall()]

    def _commit(self, batch: list[_PendingSave]) -> None:
        try:
            ids = self._insert_locked([event for pending in batch for event in pending.events])
        except IntegrityError as error:
            if len(batch) == 1:
                self._settle(batch, error=error)
            else:
                for pending in batch:
                    self._commit([pending])
            return
        except Exception as error:  # handed to every caller of this batch, who raise it
            self._settle(batch, error=error)
            return
        assert ids is not None and len(ids) == sum(len(p.events) for p in batch), "one id per inserted event"
        start = 0
        for pending in batch:
            pending.ids = ids[start : start + len(pending.events)]
            start += len(pending.events)
        self._settle(batch)

    @staticmethod
    def _settle(batch: list[_PendingSave], *, error: Exception | None = None) -> None:
        for pending in batch:
            pending.error = error
            pending.done = True


class SerialisedProcessRecorder(SerialisedSchemaChanges, PostgresProcessRecorder):
    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> Subscription[Any]:
        return BufferedPostgresSubscription(recorder=self, gt=gt, topics=topics)


class SerialisedTrackingRecorder(SerialisedSchemaChanges, PostgresTrackingRecorder):
    pass


class Factory(PostgresFactory):
    application_recorder_class = GroupCommitApplicationRecorder
    process_recorder_class = SerialisedProcessRecorder
    tracking_recorder_class = SerialisedTrackingRecorder
