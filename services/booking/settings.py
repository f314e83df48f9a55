"""Settings of the booking service (environment variables; see README)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings


class BookingSettings(ServiceSettings):
    host: str = "127.0.0.1"
    booking_port: int = Field(default=8001, ge=1, le=65535)
