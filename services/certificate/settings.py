"""Settings of the certificate service (environment variables; see README)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, IPvAnyNetwork, SecretStr, field_validator
from pydantic_settings import NoDecode

from shared.settings import ServiceSettings


class CertificateSettings(ServiceSettings):
    host: str = "127.0.0.1"
    certificate_port: int = Field(default=8002, ge=1, le=65535)

    # Object storage: empty S3_ENDPOINT = a folder under DATA_DIR (embedded mode).
    s3_endpoint: str = ""
    s3_access_key: str = ""
    s3_secret_key: SecretStr = SecretStr("")
    s3_bucket: str = "certificates"
    s3_secure: bool = False
    s3_region: str = "us-east-1"

    max_upload_bytes: int = Field(default=20_000_000, gt=0)
    pdf_check_timeout_s: float = Field(default=10.0, gt=0)
    pdf_check_workers: int = Field(default=2, ge=1)
    # Accepted files whose facts each process remembers by SHA-256, so the same bytes (a re-upload,
    # a POST /verify of an issued certificate) are not parsed again; 0 parses every file.
    pdf_check_remembered_files: int = Field(default=4096, ge=0)
    # Calls to the booking service: a dead or hung booking service costs at most this long.
    booking_timeout_s: float = Field(default=5.0, gt=0)
    # Stored files no certificate references are deleted by the sweep once this old.
    orphan_grace_s: int = Field(default=24 * 3600, ge=0)

    # Public verification (JWK set of private Ed25519 keys; empty = a development key under DATA_DIR/keys).
    verify_signing_keys: SecretStr = SecretStr("")
    # Per client and per process (see shared/ratelimit.py): N replicas allow N times this.
    verify_rate_per_minute: int = Field(default=60, ge=1)
    verify_rate_burst: int = Field(default=20, ge=1)
    # Proxies whose X-Forwarded-For is believed: comma-separated addresses or networks (CIDR).
    trusted_proxies: Annotated[tuple[IPvAnyNetwork, ...], NoDecode] = ()

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return tuple(part.strip() for part in value.split(",") if part.strip()) if isinstance(value, str) else value

    @property
    def upload_spool_dir(self) -> Path:
        return self.data_dir / "uploads"
