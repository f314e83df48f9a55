"""Composition root of the booking service: `create_app(settings)` wires everything, `serve()` runs it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from eventsourcing.persistence import PersistenceError
from fastapi import FastAPI

from services.booking import api
from services.booking.application import BookingApplication
from services.booking.projections import BOOKING_SUMMARIES
from services.booking.settings import BookingSettings
from shared.errors import DependencyDown
from shared.eventstore import eventsourcing_env
from shared.feed import ProjectionSpec, SupervisedProjection, open_view
from shared.http import configure_logging
from shared.idempotency import IdempotencyStore
from shared.service import ReadinessChecks, create_service_app
from shared.settings import load_settings
from shared.views import open_store

# Every read model the booking service keeps; its worker runs them all.
PROJECTIONS: list[ProjectionSpec] = [BOOKING_SUMMARIES]


def create_app(settings: BookingSettings) -> FastAPI:
    return create_service_app(
        service="booking",
        title="Booking service",
        description="Bookings, participation status, consent and reviews; audit trail for staff.",
        settings=settings,
        routers=[api.providers, api.products, api.bookings, api.internal],
        resources=lambda app: _resources(app, settings),
    )


@contextmanager
def _resources(app: FastAPI, settings: BookingSettings) -> Iterator[ReadinessChecks]:
    booking_app = BookingApplication(env=eventsourcing_env(settings, BookingApplication.name))
    summaries = open_view(settings, BOOKING_SUMMARIES)
    app.state.booking_app = booking_app
    app.state.booking_summaries = summaries
    app.state.idempotency = open_store(settings, IdempotencyStore, "booking_idempotency")
    workers = [SupervisedProjection(settings, spec).start() for spec in PROJECTIONS] if settings.run_workers else []

    def database() -> None:
        try:
            booking_app.recorder.max_notification_id()
        except PersistenceError as error:
            raise DependencyDown("event store unavailable") from error

    try:
        yield {"database": database}
    finally:
        for worker in workers:
            worker.stop()
        booking_app.close()


def serve() -> None:
    settings = load_settings(BookingSettings)
    assert isinstance(settings, BookingSettings)
    configure_logging(settings.log_level, settings.log_format)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.booking_port, log_config=None)
