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

The event store's calls fail fast when the database is down (see `reconnecting`), and check
pooled connections only after one was found dead, instead of with a round trip before each use
(POSTGRES_PRE_PING, which shared/eventstore.py leaves off for event stores).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from itertools import starmap
from typing import Any, TypeVar, cast
from uuid import UUID

from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    Notification,
    OperationalError,
    PersistenceError,
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
from psycopg import Cursor
from psycopg.rows import DictRow, tuple_row
from psycopg.sql import SQL, Composable, Identifier
from psycopg_pool import PoolTimeout

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
        take_schema_lock(curs)
        super()._create_table(curs)  # type: ignore[misc]


def take_schema_lock(cursor: Any) -> None:
    """Waits for the turn to change the schema, until the cursor's transaction ends."""
    cursor.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))


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

RecorderCall = TypeVar("RecorderCall", bound=Callable[..., Any])


def _connection_lost(error: PersistenceError) -> bool:
    """The call failed because its connection had died (the server restarted, or ended the session),
    not because no connection came within the pool's timeout (the database is unreachable) nor
    because of the statement itself (a lock timeout, a conflict)."""
    cause = error.__cause__
    if isinstance(cause, PoolTimeout):
        return False
    sqlstate = getattr(cause, "sqlstate", None)
    # None: lost on the client side; 08: connection exception; 57P0x: the server ended the session.
    return sqlstate is None or sqlstate.startswith(("08", "57P"))


def reconnecting(call: RecorderCall) -> RecorderCall:
    """Runs a recorder call once more if its connection had died, after dropping every dead pooled
    connection at once (after a restart, all of them are).

    Instead of the library's retries (ten attempts, each waiting up to the pool's timeout for a
    connection: close to a minute before a 503 while the database is down), a call that got no
    connection within the pool's timeout fails at once, and so does the retry.
    """

    @functools.wraps(call)
    def reconnecting_call(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(self, *args, **kwargs)
        except (InterfaceError, OperationalError) as error:
            if not _connection_lost(error):
                raise
        self.datastore.pool.check()
        return call(self, *args, **kwargs)

    return cast(RecorderCall, reconnecting_call)


class NotificationPages:
    """Mixed in (first) into PostgreSQL application recorders: the pages of notifications that
    subscriptions pull, without the library's costs per call and per row (its statement composed
    again on every call, a dict per row): a replay reads every event this way."""

    datastore: Any
    events_table_name: str

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Notification's fields in order, so that a row is its arguments.
        self._select_notifications = _rendered(
            SQL("SELECT originator_id, originator_version, topic, state, notification_id FROM {schema}.{table}").format(
                schema=Identifier(self.datastore.schema), table=Identifier(self.events_table_name)
            )
        )

    @reconnecting
    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        conditions: list[bytes] = []
        params: list[Any] = []
        if start is not None:
            conditions.append(b"notification_id>=%s" if inclusive_of_start else b"notification_id>%s")
            params.append(start)
        if stop is not None:
            conditions.append(b"notification_id<=%s")
            params.append(stop)
        if topics:
            conditions.append(b"topic=ANY(%s)")
            params.append(list(topics))
        where = b" WHERE " + b" AND ".join(conditions) if conditions else b""
        params.append(limit)
        # Binary results: the events' state comes as it is stored, not escaped into hex and back.
        with self.datastore.get_connection() as conn, conn.cursor(binary=True, row_factory=tuple_row) as curs:
            curs.execute(
                self._select_notifications + where + b" ORDER BY notification_id LIMIT %s", params, prepare=True
            )
            return list(starmap(Notification, curs.fetchall()))


class GroupCommitApplicationRecorder(NotificationPages, SerialisedSchemaChanges, PostgresApplicationRecorder):
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
        # Statements as bytes: psycopg renders a composed statement again on every execution. The
        # events go in binary (%b): psycopg dumps a composite array as text in Python, escaping
        # every byte, several times slower.
        self.sql_locked_insert = _rendered(
            SQL("SELECT * FROM {schema}.{function}(%b)").format(
                schema=Identifier(self.datastore.schema), function=Identifier(self.locked_insert_function)
            )
        )
        # All the events of an aggregate being loaded (no snapshots, no cache: the only query on the hot path).
        self.sql_select_aggregate_events = _rendered(
            SQL(
                "SELECT originator_id, originator_version, topic, state FROM {schema}.{table} "
                "WHERE originator_id = %s ORDER BY originator_version"
            ).format(schema=Identifier(self.datastore.schema), table=Identifier(self.events_table_name))
        )

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> Subscription[Any]:
        """Lets a batching projection runner see what is already fetched (shared/feed.py)."""
        return BufferedPostgresSubscription(recorder=self, gt=gt, topics=topics)

    @reconnecting
    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        if gt is not None or lte is not None or desc or limit is not None:  # not a whole aggregate: the library's query
            return super().select_events(originator_id, gt=gt, lte=lte, desc=desc, limit=limit)
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self.sql_select_aggregate_events, (originator_id,), prepare=True)
            return [
                StoredEvent(row["originator_id"], row["originator_version"], row["topic"], bytes(row["state"]))
                for row in curs.fetchall()
            ]

    @reconnecting
    def max_notification_id(self) -> int | None:
        return super().max_notification_id()

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        if kwargs.get("tracking") is not None:  # not a plain save: nothing to group
            return super().insert_events(stored_events, **kwargs)
        if not stored_events:  # a command that changed nothing: no transaction to commit
            return []
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

    @reconnecting
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


def _rendered(statement: Composable) -> bytes:
    return statement.as_bytes(None)


class SerialisedProcessRecorder(NotificationPages, SerialisedSchemaChanges, PostgresProcessRecorder):
    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> Subscription[Any]:
        return BufferedPostgresSubscription(recorder=self, gt=gt, topics=topics)


class SerialisedTrackingRecorder(SerialisedSchemaChanges, PostgresTrackingRecorder):
    pass


class Factory(PostgresFactory):
    application_recorder_class = GroupCommitApplicationRecorder
    process_recorder_class = SerialisedProcessRecorder
    tracking_recorder_class = SerialisedTrackingRecorder
