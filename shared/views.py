"""Read models as tracking recorders: rows and the tracking position commit in one transaction.

A view is written once, in portable SQL with `:name` parameters; `sqlite_view()` and
`postgres_view()` bind it to the library's SQLite or PostgreSQL tracking recorder.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar, TypeVar

from eventsourcing.persistence import Tracking, TrackingRecorder, WaitInterruptedError
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteTrackingRecorder
from psycopg.sql import SQL

from shared.settings import ServiceSettings

SqlStoreT = TypeVar("SqlStoreT", bound="SqlStore")

_NAMED_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")

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
            return _NAMED_PARAM.sub(r"%(\1)s", statement)
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


class SqlView(SqlTables):
    """Mixin for tracking recorders that keep a read model in tables of their own."""

    def record(self, tracking: Tracking, write: Callable[[Any], None] | None = None) -> None:
        """Applies `write` and records the tracking position atomically (exactly once)."""
        with self._cursor(commit=True) as cursor:
            if write is not None:
                write(cursor)
            self._insert_tracking(cursor, tracking)  # type: ignore[attr-defined]

    def reset(self, application_names: tuple[str, ...]) -> None:
        """Empties the read model and forgets the tracked positions, so a runner replays it all."""
        with self._cursor(commit=True) as cursor:
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

    def construct_create_table_statements(self) -> list[str]:
        return [*super().construct_create_table_statements(), *self.view_ddl()]


class _PostgresBase(SqlView, PostgresTrackingRecorder):
    dialect = "postgres"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sql_create_statements.extend(SQL(ddl) for ddl in self.view_ddl())  # type: ignore[arg-type]


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
