"""ASGI factories for uvicorn (`--factory`): the services as deployed, and the bare baseline."""

from __future__ import annotations

from fastapi import FastAPI

from shared.http import configure_logging
from shared.settings import load_settings

BARE_PATH = "/bare"


def booking_app() -> FastAPI:
    from services.booking.main import create_app
    from services.booking.settings import BookingSettings

    settings = load_settings(BookingSettings)
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)  # type: ignore[arg-type]


def certificate_app() -> FastAPI:
    from services.certificate.main import create_app
    from services.certificate.settings import CertificateSettings

    settings = load_settings(CertificateSettings)
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)  # type: ignore[arg-type]


def bare_app() -> FastAPI:
    """The fastest thing FastAPI can answer in the same uvicorn setup: a constant."""
    app = FastAPI()

    @app.get(BARE_PATH)
    async def constant() -> dict[str, str]:
        return {"status": "ok"}

    return app
