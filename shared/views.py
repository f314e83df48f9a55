"""Read models as tracking recorders: rows and the tracking position commit in one transaction.

A view is written once, in portable SQL with `:name` parameters; `sqlite_view()` and
`postgres_view()` bind it to the library's SQLite or PostgreSQL tracking recorder.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from eventsourcing.persistence import Tracking, TrackingRecorder, WaitInterruptedError
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteTrackingRecorder
from psycopg.sql import SQL

from shared.postgres_store import SerialisedSchemaChanges
from shared.settings import ServiceSettings

SqlStoreT = TypeVar("SqlStoreT", bound="SqlStore")

_NAMED_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@functools.lru_cache(maxsize=1024)
def _pyformat(statement: str) -> str:
    """`:name` → `%(name)s`; cached: a projection runs the same few statements for every event."""
    return _NAMED_PARAM.sub(r"%(\1)s", statement)

EPOCH_KEY = "__epoch__"
"""A row of every view's tracking table that counts its resets (rebuilds)."""

DIALECT_TYPES = {
    "sqlite": {"serial": "INTEGER PRIMARY KEY AUTOINCREMENT"},
    "postgres": {"serial": "BIGSERIAL PRIMARY KEY"},
}


class SqlTables:
    """Portable SQL over one of the library's datastores (SQLite or PostgreSQL)."""

    dialect: ClassVar[str]
    tables: ClassVar[tuple[str, ...]] = ()
    """DDL in portable SQL; `{serial}` is replaced by the dialect's auto-increment key."""
    table_names: ClassVar[tuple[str, ...]] = ()
    """Tables emptied by a rebuild."""

    def view_ddl(self) -> list[str]:
        return [ddl.format(**DIALECT_TYPES[self.dialect]) for ddl in self.tables]

    def _sql(self, statement: str) -> str:
        """`:name` parameters as each driver wants them (view SQL holds no literal `%`)."""
        if self.dialect == "postgres":
            return _pyformat(statement)
        return statement

    @contextmanager
    def _cursor(self, *, commit: bool) -> Iterator[Any]:
        with self.datastore.transaction(commit=commit) as cursor:  # type: ignore[attr-defined]
            yield cursor

    def execute(self, cursor: Any, statement: str, params: Mapping[str, Any] | None = None) -> None:
        cursor.execute(self._sql(statement), dict(params or {}))

    def fetch_all(self, statement: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        with self._cursor(commit=False) as cursor:
            self.execute(cursor, statement, params)
            return [dict(row) for row in cursor.fetchall()]

    def fetch_one(self, statement: str, params: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        rows = self.fetch_all(statement, params)
        return rows[0] if rows else None


class StaleView(Exception):
    """The view was reset (a rebuild began) after this runner started: it must restart from the beginning."""


@dataclass
class _Batch:
    view: SqlView
    cursor: Any
    tracking: Tracking | None = None


_open_batches = threading.local()  # the batch open in this thread (a runner's processing thread)


class SqlView(SqlTables):
    """Mixin for tracking recorders that keep a read model in tables of their own."""

    expected_epoch: int | None = None
    """Set by a running projection: its writes then fail once the view is reset (see `record`)."""
    _epoch_check_after_writes: ClassVar[bool]
    _share_lock: ClassVar[str]

    def record(self, tracking: Tracking, write: Callable[[Any], None] | None = None) -> None:
        """Applies `write` and records the tracking position atomically (exactly once).

        A runner that started before a reset must not write after it (its subscription would
        skip what the reset asks to replay): the epoch check makes such a write fail instead.
        Inside `batch()`, the write joins the batch's transaction.
        """
        batch: _Batch | None = getattr(_open_batches, "batch", None)
        if batch is not None and batch.view is self:
            if write is not None:
                write(batch.cursor)
            batch.tracking = tracking
            return
        with self._cursor(commit=True) as cursor:
            if not self._epoch_check_after_writes:
                self._check_epoch(cursor)
            if write is not None:
                write(cursor)
            self._insert_tracking(cursor, tracking)  # type: ignore[attr-defined]
            if self._epoch_check_after_writes:
                self._check_epoch(cursor)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Records made inside commit together, with the last one's position: one transaction (and
        one WAL flush) for many events, still exactly once. For a runner catching up."""
        with self._batch_cursor() as cursor:
            if not self._epoch_check_after_writes:
                self._check_epoch(cursor)
            batch = _open_batches.batch = _Batch(self, cursor)
            try:
                yield
            finally:
                _open_batches.batch = None
            if batch.tracking is not None:
                self._insert_tracking(cursor, batch.tracking)  # type: ignore[attr-defined]
                if self._epoch_check_after_writes:
                    self._check_epoch(cursor)

    def _batch_cursor(self) -> AbstractContextManager[Any]:
        return self._cursor(commit=True)

    def epoch(self) -> int:
        """How many times the view was reset."""
        return self.max_tracking_id(EPOCH_KEY) or 0  # type: ignore[attr-defined,no-any-return]

    def _check_epoch(self, cursor: Any) -> None:
        if self.expected_epoch is None:
            return
        cursor.execute(
            self._sql(
                f"SELECT notification_id FROM {self._tracking_table()} WHERE application_name = :key{self._share_lock}"
            ),
            {"key": EPOCH_KEY},
        )
        row = cursor.fetchone()
        if (row["notification_id"] if row else 0) != self.expected_epoch:
            msg = "the view was reset after this projection runner started"
            raise StaleView(msg)

    def reset(self, application_names: tuple[str, ...]) -> None:
        """Empties the read model and forgets the tracked positions, so a runner replays it all.

        The epoch goes up first, in the same transaction: runners that started earlier can no
        longer write (they restart and replay), and on PostgreSQL this waits for their writes in flight.
        """
        with self._cursor(commit=True) as cursor:
            table = self._tracking_table()
            cursor.execute(
                self._sql(
                    f"INSERT INTO {table} (application_name, notification_id) VALUES (:key, 1) "
                    f"ON CONFLICT (application_name) DO UPDATE SET notification_id = {table}.notification_id + 1"
                ),
                {"key": EPOCH_KEY},
            )
            for table in self.table_names:
                cursor.execute(self._sql(f"DELETE FROM {table}"))
            for name in application_names:
                cursor.execute(
                    self._sql(f"DELETE FROM {self._tracking_table()} WHERE application_name = :name"),
                    {"name": name},
                )

    def wait(
        self,
        application_name: str,
        notification_id: int | None,
        timeout: float = 1.0,
        interrupt: threading.Event | None = None,
    ) -> None:
        """Like the library's wait(), but polls from 2 ms up: read-your-writes is on the request path."""
        deadline = time.monotonic() + timeout
        pause = 0.002
        while not self.has_tracking_id(application_name, notification_id):  # type: ignore[attr-defined]
            if time.monotonic() + pause > deadline:
                msg = f"position {notification_id} of {application_name!r} not yet in the read model"
                raise TimeoutError(msg)
            if interrupt is not None and interrupt.wait(pause):
                raise WaitInterruptedError
            if interrupt is None:
                time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _tracking_table(self) -> str:
        if self.dialect == "postgres":
            return self.tracking_table_name  # type: ignore[attr-defined,no-any-return]
        return "tracking"


class _SQLiteBase(SqlView, SQLiteTrackingRecorder):
    dialect = "sqlite"
    # After the first write the transaction holds the database's write lock, so no reset can
    # commit between the check and the commit (a read first would pin an older snapshot). For the
    # same reason no epoch row is written with the tables: a missing row reads as epoch 0.
    _epoch_check_after_writes = True
    _share_lock = ""

    def construct_create_table_statements(self) -> list[str]:
        return [*super().construct_create_table_statements(), *self.view_ddl()]


class _PostgresBase(SqlView, SerialisedSchemaChanges, PostgresTrackingRecorder):
    dialect = "postgres"
    # First, with a share lock on the epoch row: a reset (which updates that row first) waits
    # for this transaction, or this one sees the new epoch. The row is made with the tables, so
    # that there is always one to lock.
    _epoch_check_after_writes = False
    _share_lock = " FOR SHARE"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        epoch_row = (
            f"INSERT INTO {self._tracking_table()} (application_name, notification_id) "
            f"VALUES ('{EPOCH_KEY}', 0) ON CONFLICT DO NOTHING"
        )
        self.sql_create_statements.extend(SQL(ddl) for ddl in [*self.view_ddl(), epoch_row])  # type: ignore[arg-type]

    @contextmanager
    def _batch_cursor(self) -> Iterator[Any]:
        # Pipeline mode: a batch's statements go out without waiting for each answer.
        with self.datastore.get_connection() as conn, conn.pipeline(), conn.transaction():  # type: ignore[attr-defined]
            yield conn.cursor()


def sqlite_view(view: type[SqlView]) -> type[TrackingRecorder]:
    return type(f"SQLite{view.__name__}", (view, _SQLiteBase), {"__module__": view.__module__})


def postgres_view(view: type[SqlView]) -> type[TrackingRecorder]:
    return type(f"Postgres{view.__name__}", (view, _PostgresBase), {"__module__": view.__module__})


def view_class_for(settings: ServiceSettings, view: type[SqlView]) -> type[TrackingRecorder]:
    return postgres_view(view) if settings.uses_postgres else sqlite_view(view)


class SqlStore(SqlTables):
    """Tables of our own that are not a projection (e.g. idempotency keys), on a library datastore."""

    def __init__(self, datastore: Any, dialect: str) -> None:
        self.datastore = datastore
        self.dialect = dialect  # type: ignore[misc]
        with self._cursor(commit=True) as cursor:
            for ddl in self.view_ddl():
                cursor.execute(ddl)


def open_store(settings: ServiceSettings, store: type[SqlStoreT], name: str) -> SqlStoreT:
    """A store in the database (PostgreSQL) or SQLite file (embedded) called `name`."""
    from eventsourcing.persistence import InfrastructureFactory
    from eventsourcing.utils import Environment

    from shared.eventstore import eventsourcing_env

    env = Environment(name, eventsourcing_env(settings, name))
    factory = InfrastructureFactory.construct(env=env)
    return store(factory.datastore, "postgres" if settings.uses_postgres else "sqlite")  # type: ignore[attr-defined]
