"""Settings of the booking service (environment variables; see README)."""

from __future__ import annotations

from shared.settings import ServiceSettings


class BookingSettings(ServiceSettings):
    host: str = "127.0.0.1"
    booking_port: int = 8001
