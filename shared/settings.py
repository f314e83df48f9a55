"""Typed settings, read from environment variables only (see README, "Settings")."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class PostgresDsn:
    """The parts of a postgresql:// URL that the event store needs."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 5432
        self.user = unquote(parts.username or "postgres")
        self.password = unquote(parts.password or "")
        self.dbname = parts.path.lstrip("/") or "postgres"


class ServiceSettings(BaseSettings):
    """Settings every service shares. Names are the environment variables."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    data_dir: Path = Path("var")
    database_url: str = ""
    auth_secret: SecretStr = SecretStr("")
    auth_public_key: str = ""
    auth_jwks_url: str = ""
    booking_url: str = "http://127.0.0.1:8001"
    certificate_url: str = "http://127.0.0.1:8002"
    notifier_url: str = "http://127.0.0.1:8003"
    run_workers: bool = True
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "console"
    max_request_bytes: int = Field(default=64 * 1024, gt=0)
    read_your_writes_timeout_s: float = Field(default=5.0, ge=0)
    lock_timeout_s: int = Field(default=5, ge=1)
    db_pool_size: int = Field(default=5, ge=1)

    @field_validator("database_url")
    @classmethod
    def _only_postgres_or_embedded(cls, value: str) -> str:
        if value and not value.startswith(("postgresql://", "postgres://")):
            msg = "must be empty (embedded SQLite) or a postgresql:// URL"
            raise ValueError(msg)
        return value

    @property
    def uses_postgres(self) -> bool:
        return bool(self.database_url)

    @property
    def postgres(self) -> PostgresDsn:
        return PostgresDsn(self.database_url)

    @property
    def sqlite_dir(self) -> Path:
        return self.data_dir / "db"

    @property
    def dev_auth_secret(self) -> str:
        return self.auth_secret.get_secret_value()


def load_settings(cls: type[ServiceSettings]) -> ServiceSettings:
    """Reads settings at start-up; a wrong variable stops the process with a message naming it."""
    from pydantic import ValidationError

    try:
        return cls()
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in error.errors())
        raise SystemExit(f"invalid settings: {problems}") from None
