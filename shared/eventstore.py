"""Event-store configuration: one place that turns settings into the library's environment.

Embedded mode gives every application and projection its own SQLite file under DATA_DIR/db;
production mode puts them all in one PostgreSQL database, in tables named after them.
"""

from __future__ import annotations

from shared.settings import ServiceSettings

# How long a call waits for a pooled connection. While the database is down no connection comes:
# this is about how long a command takes to answer 503 (shared/postgres_store.py, `reconnecting`).
POOL_TIMEOUT_S = 2


def eventsourcing_env(settings: ServiceSettings, *names: str, pre_ping: bool = True) -> dict[str, str]:
    """The library environment for the named applications and projections (prefixed keys).

    `pre_ping`: check each pooled PostgreSQL connection with a round trip before using it, so that
    none found dead after a restart fails a call. An application's event store goes without: its
    recorder checks the whole pool once a call finds a connection dead, and runs the call again.
    """
    if settings.uses_postgres:
        dsn = settings.postgres
        return {
            # The library's module with group commit: concurrent saves share one locked transaction.
            "PERSISTENCE_MODULE": "shared.postgres_store:Factory",
            "POSTGRES_DBNAME": dsn.dbname,
            "POSTGRES_HOST": dsn.host,
            "POSTGRES_PORT": str(dsn.port),
            "POSTGRES_USER": dsn.user,
            "POSTGRES_PASSWORD": dsn.password,
            # A stuck writer must fail fast instead of waiting forever (the library's default).
            "POSTGRES_LOCK_TIMEOUT": str(settings.lock_timeout_s),
            "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "30",
            # The library's name for the pool's wait (it sets no connect timeout of libpq's).
            "POSTGRES_CONNECT_TIMEOUT": str(POOL_TIMEOUT_S),
            "POSTGRES_POOL_SIZE": str(settings.db_pool_size),
            "POSTGRES_MAX_OVERFLOW": str(settings.db_pool_size * 2),
            "POSTGRES_PRE_PING": "y" if pre_ping else "n",
        }
    settings.sqlite_dir.mkdir(parents=True, exist_ok=True)
    env = {"PERSISTENCE_MODULE": "shared.sqlite_feed:Factory", "SQLITE_LOCK_TIMEOUT": str(settings.lock_timeout_s)}
    for name in names:
        env[f"{name.upper()}_SQLITE_DBNAME"] = str(settings.sqlite_dir / f"{name}.sqlite")
    return env
