"""Composition root of the booking service: `create_app(settings)` wires everything, `serve()` runs it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from eventsourcing.persistence import PersistenceError
from fastapi import FastAPI

from services.booking import api, audit_api
from services.booking.application import BookingApplication
from services.booking.audit import AUDIT_BOOKING, AUDIT_CERTIFICATE, AUDIT_PROJECTIONS
from services.booking.projections import BOOKING_SUMMARIES
from services.booking.settings import BookingSettings
from shared.errors import DependencyDown
from shared.eventstore import eventsourcing_env
from shared.feed import (
    ProjectionLagCollector,
    ProjectionSpec,
    SupervisedProjection,
    open_event_recorder,
    open_view,
    projection_positions,
)
from shared.http import configure_logging
from shared.idempotency import IdempotencyStore
from shared.metrics import EventsWrittenCollector
from shared.service import ReadinessChecks, create_service_app, run_api
from shared.settings import load_settings
from shared.views import open_store

# Every read model the booking service keeps; its worker runs them all.
PROJECTIONS: list[ProjectionSpec] = [BOOKING_SUMMARIES, *AUDIT_PROJECTIONS]


def create_app(settings: BookingSettings) -> FastAPI:
    return create_service_app(
        service="booking",
        title="Booking service",
        description="Bookings, participation status, consent and reviews; audit trail for staff.",
        settings=settings,
        routers=[api.bookings, api.providers, api.products, api.internal, audit_api.router],
        resources=lambda app: _resources(app, settings),
    )


@contextmanager
def _resources(app: FastAPI, settings: BookingSettings) -> Iterator[ReadinessChecks]:
    booking_app = BookingApplication(env=eventsourcing_env(settings, BookingApplication.name, pre_ping=False))
    summaries = open_view(settings, BOOKING_SUMMARIES)
    audit_trail = open_view(settings, AUDIT_BOOKING, small_pool=True)  # staff queries only
    certificate_events = open_event_recorder(settings, AUDIT_CERTIFICATE.upstream)
    app.state.booking_app = booking_app
    app.state.booking_summaries = summaries
    app.state.audit_trail = audit_trail
    lag = ProjectionLagCollector(
        lambda: projection_positions(
            PROJECTIONS,
            {BOOKING_SUMMARIES.name: summaries, AUDIT_BOOKING.name: audit_trail},
            {BookingApplication.name: booking_app.recorder, AUDIT_CERTIFICATE.upstream.name: certificate_events},
        )
    )
    app.state.observability.registry.register(lag)
    events_written = EventsWrittenCollector({BookingApplication.name: booking_app.recorder})
    app.state.observability.registry.register(events_written)
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
            worker.request_stop()  # all at once: each takes up to a second to notice
        for worker in workers:
            worker.stop()
        app.state.observability.registry.unregister(lag)
        app.state.observability.registry.unregister(events_written)
        for datastore in (summaries.datastore, audit_trail.datastore, certificate_events.datastore):
            datastore.close()
        booking_app.close()


def serve() -> None:
    settings = load_settings(BookingSettings)
    assert isinstance(settings, BookingSettings)
    configure_logging(settings.log_level, settings.log_format)
    run_api(create_app(settings), host=settings.host, port=settings.booking_port)
