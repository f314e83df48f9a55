"""Event-store configuration: one place that turns settings into the library's environment.

Embedded mode gives every application and projection its own SQLite file under DATA_DIR/db;
production mode puts them all in one PostgreSQL database, in tables named after them.
"""

from __future__ import annotations

from shared.settings import ServiceSettings


def eventsourcing_env(settings: ServiceSettings, *names: str) -> dict[str, str]:
    """The library environment for the named applications and projections (prefixed keys)."""
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
            "POSTGRES_CONNECT_TIMEOUT": "5",
            "POSTGRES_POOL_SIZE": str(settings.db_pool_size),
            "POSTGRES_MAX_OVERFLOW": str(settings.db_pool_size * 2),
            "POSTGRES_PRE_PING": "y",
        }
    settings.sqlite_dir.mkdir(parents=True, exist_ok=True)
    env = {"PERSISTENCE_MODULE": "shared.sqlite_feed:Factory", "SQLITE_LOCK_TIMEOUT": str(settings.lock_timeout_s)}
    for name in names:
        env[f"{name.upper()}_SQLITE_DBNAME"] = str(settings.sqlite_dir / f"{name}.sqlite")
    return env
