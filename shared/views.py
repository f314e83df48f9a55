"""Read models as tracking recorders: rows and the tracking position commit in one transaction.

A view is written once, in portable SQL with `:name` parameters; `sqlite_view()` and
`postgres_view()` bind it to the library's SQLite or PostgreSQL tracking recorder.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, ClassVar, TypeVar

from eventsourcing.persistence import Tracking, TrackingRecorder, WaitInterruptedError
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteTrackingRecorder
from psycopg import pq
from psycopg.sql import SQL

from shared.postgres_store import SerialisedSchemaChanges, take_schema_lock
from shared.settings import ServiceSettings

SqlStoreT = TypeVar("SqlStoreT", bound="SqlStore")

_NAMED_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@functools.lru_cache(maxsize=1024)
def _pyformat(statement: str) -> str:
    """`:name` → `%(name)s`; cached: a projection runs the same few statements for every event."""
    return _NAMED_PARAM.sub(r"%(\1)s", statement)


BULK_ROWS = 100
"""Rows that a batch inserts from which it is a bulk one (see `SqlView.batch`): a few more round
trips, measured at about 0.3 ms in all, against about 4 us of CPU saved per row (client and server)."""

PIPELINE_OFF = pq.PipelineStatus.OFF

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

    @contextmanager
    def _statement_cursor(self) -> Iterator[Any]:
        """For statements that each commit by themselves: on PostgreSQL no round trips for BEGIN and
        COMMIT (or ROLLBACK), the pool's connections being in autocommit mode."""
        if self.dialect == "postgres":
            with self.datastore.cursor() as cursor:  # type: ignore[attr-defined]
                yield cursor
        else:
            with self._cursor(commit=True) as cursor:
                yield cursor

    def reading_cursor(self, cursor: Any) -> Any:
        """A cursor in the transaction of `cursor`, for a statement whose results are read: on
        PostgreSQL a new one, since in a pipeline (see `SqlView.batch`) a cursor's results are
        those of its last statement."""
        return cursor.connection.cursor() if self.dialect == "postgres" else cursor

    def execute(self, cursor: Any, statement: str, params: Mapping[str, Any] | None = None) -> None:
        cursor.execute(self._sql(statement), dict(params or {}))

    def fetch_where_in(self, cursor: Any, select: str, column: str, values: Collection[str]) -> list[dict[str, Any]]:
        """The rows of `select` (which has no WHERE clause) whose `column` is one of `values`, in the
        transaction of `cursor`: one statement, the same text whatever the number of values."""
        if not values:
            return []
        reader = self.reading_cursor(cursor)
        if self.dialect == "postgres":
            reader.execute(f"{select} WHERE {column} = ANY(%(values)s)", {"values": list(values)})
        else:
            in_values = f"{column} IN (SELECT value FROM json_each(:values))"
            reader.execute(f"{select} WHERE {in_values}", {"values": json.dumps(list(values))})
        return [dict(row) for row in reader.fetchall()]

    def insert_rows(self, cursor: Any, table: str, rows: Sequence[Mapping[str, Any]], *, on_conflict: str = "") -> None:
        """Inserts `rows` (each a value by column, all with the same columns) in their order.
        `on_conflict` is an ON CONFLICT clause (`excluded.column`: the new value).

        PostgreSQL gets the rows by COPY in a bulk batch (see `SqlView.batch`) when no ON CONFLICT
        clause is needed; otherwise, as in a pipeline, where COPY cannot run, as one JSON
        parameter of one statement: cheaper to send than one statement per row, yet per row about
        twice the client's and thrice the server's CPU of a COPY. SQLite runs one statement per row, in C.
        """
        if not rows:
            return
        names = list(rows[0])
        columns = ", ".join(names)
        if self.dialect == "postgres" and not on_conflict and cursor.connection.info.pipeline_status == PIPELINE_OFF:
            with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row([row[name] for name in names])
        elif self.dialect == "postgres":
            cursor.execute(
                f"INSERT INTO {table} ({columns}) SELECT {columns}"
                f" FROM json_populate_recordset(NULL::{table}, CAST(%(rows)s AS json))"
                f" WITH ORDINALITY ORDER BY ordinality {on_conflict}",
                {"rows": json.dumps(rows, check_circular=False)},  # values by column: no cycles to look for
            )
        else:
            values = ", ".join(f":{column}" for column in names)
            cursor.executemany(f"INSERT INTO {table} ({columns}) VALUES ({values}) {on_conflict}", rows)

    def fetch_all(self, statement: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        # One statement sees one snapshot: it needs no transaction around it.
        with self._statement_cursor() as cursor:
            self.execute(cursor, statement, params)
            return [dict(row) for row in cursor.fetchall()]

    def fetch_one(self, statement: str, params: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        rows = self.fetch_all(statement, params)
        return rows[0] if rows else None


class StaleView(Exception):
    """The view was reset (a rebuild began) after this runner started: it must restart from the beginning."""


_open_batches = threading.local()  # the view whose batch is open in this thread, and its cursor


class SqlView(SqlTables):
    """Mixin for tracking recorders that keep a read model in tables of their own."""

    expected_epoch: int | None = None
    """Set by a running projection: its writes then fail once the view is reset (see `batch`)."""
    _share_lock: ClassVar[str]

    def record(self, tracking: Tracking, write: Callable[[Any], None] | None = None) -> None:
        """Applies `write` (given a cursor) and records the tracking position atomically (exactly once).

        Inside `batch()`, the write joins the batch's transaction, which records the batch's position.
        """
        if getattr(_open_batches, "view", None) is self:
            if write is not None:
                write(_open_batches.cursor)
            return
        with self.batch(tracking) as cursor:
            if write is not None:
                write(cursor)

    @contextmanager
    def batch(self, tracking: Tracking, *, bulk: bool = False) -> Iterator[Any]:
        """A transaction that records `tracking`, the position of the last of the events processed
        in it, and yields its cursor; `record()` calls inside join it. One commit for many events,
        still exactly once. On PostgreSQL its statements go out in a pipeline: read results on a
        cursor of their own (`reading_cursor`). A `bulk` batch, one that inserts many rows (from
        BULK_ROWS), goes without: a round trip per statement, but its inserts go by COPY.

        A runner that started before a reset must not write after it (its subscription would
        skip what the reset asks to replay): the epoch check makes such a transaction fail instead.
        """
        with self._batch_cursor(bulk=bulk) as cursor:
            self._begin(cursor, tracking)
            _open_batches.view, _open_batches.cursor = self, cursor
            try:
                yield cursor
            finally:
                _open_batches.view = _open_batches.cursor = None

    def _batch_cursor(self, *, bulk: bool) -> AbstractContextManager[Any]:
        return self._cursor(commit=True)

    def _begin(self, cursor: Any, tracking: Tracking) -> None:
        """Checks the epoch and records the position, in the order the database needs (see the dialects)."""
        raise NotImplementedError

    def epoch(self) -> int:
        """How many times the view was reset."""
        return self.max_tracking_id(EPOCH_KEY) or 0  # type: ignore[attr-defined,no-any-return]

    def _query_epoch(self, cursor: Any) -> None:
        cursor.execute(
            self._sql(
                f"SELECT notification_id FROM {self._tracking_table()} WHERE application_name = :key{self._share_lock}"
            ),
            {"key": EPOCH_KEY},
        )

    def _verify_epoch(self, cursor: Any) -> None:
        """Raises StaleView unless the epoch read by `_query_epoch` on `cursor` is the expected one."""
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
            if self.dialect == "postgres":
                # At once, where a DELETE takes seconds on a large view; readers wait for the commit.
                cursor.execute(f"TRUNCATE {', '.join(self.table_names)}")
            else:
                for table in self.table_names:
                    cursor.execute(f"DELETE FROM {table}")  # without WHERE, SQLite truncates
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
    _share_lock = ""

    def _begin(self, cursor: Any, tracking: Tracking) -> None:
        # The position first: that write takes the database's write lock, so no other writer (a
        # reset, the runner of another upstream) commits between this transaction's reads and its
        # commit (a read first would pin a snapshot that a write then fails on). For the same
        # reason no epoch row is written with the tables: a missing row reads as epoch 0.
        self._insert_tracking(cursor, tracking)  # type: ignore[attr-defined]
        if self.expected_epoch is not None:
            self._query_epoch(cursor)
            self._verify_epoch(cursor)

    def construct_create_table_statements(self) -> list[str]:
        return [*super().construct_create_table_statements(), *self.view_ddl()]


class _PostgresBase(SqlView, SerialisedSchemaChanges, PostgresTrackingRecorder):
    dialect = "postgres"
    _share_lock = " FOR SHARE"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        epoch_row = (
            f"INSERT INTO {self._tracking_table()} (application_name, notification_id) "
            f"VALUES ('{EPOCH_KEY}', 0) ON CONFLICT DO NOTHING"
        )
        self.sql_create_statements.extend(SQL(ddl) for ddl in [*self.view_ddl(), epoch_row])  # type: ignore[arg-type]

    @contextmanager
    def _batch_cursor(self, *, bulk: bool) -> Iterator[Any]:
        # Pipeline mode: statements go out without waiting for their results, so a batch waits
        # only where it reads (on a cursor of its own: `reading_cursor`) and at its commit.
        # A bulk batch's few round trips weigh little beside its rows, which COPY takes cheaper.
        connection = self.datastore.get_connection()  # type: ignore[attr-defined]
        with connection as conn, nullcontext() if bulk else conn.pipeline(), conn.transaction():
            yield conn.cursor()

    def _begin(self, cursor: Any, tracking: Tracking) -> None:
        # The commit does not wait for its WAL flush (the events' commits did): rows are visible
        # at commit all the same, and a crash of the database may lose the last view
        # transactions, but each with its position, so the runner replays their events.
        cursor.execute("SET LOCAL synchronous_commit = off")
        # The epoch first, with a share lock on its row: a reset (which updates that row first)
        # waits for this transaction, or this one sees the new epoch. The row is made with the
        # tables, so that there is always one to lock. In a pipeline, BEGIN, this check and the
        # position take one round trip.
        epoch = None
        if self.expected_epoch is not None:
            epoch = self.reading_cursor(cursor)
            self._query_epoch(epoch)
        self._insert_tracking(self.reading_cursor(cursor), tracking)  # type: ignore[attr-defined]
        if epoch is not None:
            self._verify_epoch(epoch)


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
            if dialect == "postgres":  # replicas starting together take turns (see SerialisedSchemaChanges)
                take_schema_lock(cursor)
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
