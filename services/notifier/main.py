"""Composition root of the notifier: `create_app(settings)` wires everything, `serve()` runs it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from eventsourcing.persistence import PersistenceError
from fastapi import FastAPI

from services.booking.application import BookingApplication
from services.notifier import api
from services.notifier.application import NotifierProcess
from services.notifier.delivery import NOTIFIER_PROCESS, NotifierWorker
from services.notifier.mail import MailDeliveryError, SmtpMailer
from services.notifier.metrics import NotificationMetrics
from services.notifier.projections import NOTIFICATION_LOG
from services.notifier.settings import NotifierSettings
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

# Every read model the notifier keeps (the process itself is run by NotifierWorker).
PROJECTIONS: list[ProjectionSpec] = [NOTIFICATION_LOG]


def create_app(settings: NotifierSettings) -> FastAPI:
    return create_service_app(
        service="notifier",
        title="Notifier",
        description="Review and LinkedIn reminders after bookings: what was scheduled, sent or parked (staff).",
        settings=settings,
        routers=[api.notifications],
        resources=lambda app: _resources(app, settings),
    )


def start_workers(settings: NotifierSettings) -> tuple[SupervisedProjection, NotifierWorker]:
    """The notification log and the process + sender, each in a background thread."""
    log_projection = SupervisedProjection(settings, NOTIFICATION_LOG)
    worker = NotifierWorker(settings)
    log_projection.start()
    worker.start()
    return log_projection, worker


@contextmanager
def _resources(app: FastAPI, settings: NotifierSettings) -> Iterator[ReadinessChecks]:
    process = NotifierProcess(env=eventsourcing_env(settings, NotifierProcess.name))
    log_view = open_view(settings, NOTIFICATION_LOG)
    booking_events = open_event_recorder(settings, BookingApplication)
    app.state.notifier_process = process
    app.state.notification_log = log_view
    collectors = [
        NotificationMetrics(log_view),
        EventsWrittenCollector({NotifierProcess.name: process.recorder}),
        ProjectionLagCollector(
            lambda: projection_positions(
                [*PROJECTIONS, NOTIFIER_PROCESS],
                {NOTIFICATION_LOG.name: log_view, NotifierProcess.name: process.recorder},
                {NotifierProcess.name: process.recorder, BookingApplication.name: booking_events},
            )
        ),
    ]
    for collector in collectors:
        app.state.observability.registry.register(collector)
    app.state.idempotency = open_store(settings, IdempotencyStore, "notifier_idempotency")
    workers = start_workers(settings) if settings.run_workers else None

    def database() -> None:
        try:
            process.recorder.max_notification_id()
        except PersistenceError as error:
            raise DependencyDown("event store unavailable") from error

    checks: ReadinessChecks = {"database": database}
    mailer = workers[1].mailer if workers else None
    if isinstance(mailer, SmtpMailer):
        # Only a process that sends mail depends on the mail server.
        def smtp() -> None:
            try:
                mailer.ping()
            except MailDeliveryError as error:
                raise DependencyDown(str(error)) from error

        checks["smtp"] = smtp
    try:
        yield checks
    finally:
        for worker in workers or ():
            worker.stop()
        for collector in collectors:
            app.state.observability.registry.unregister(collector)
        log_view.datastore.close()
        booking_events.datastore.close()
        process.close()


def serve() -> None:
    settings = load_settings(NotifierSettings)
    assert isinstance(settings, NotifierSettings)
    configure_logging(settings.log_level, settings.log_format)
    run_api(create_app(settings), host=settings.host, port=settings.notifier_port)
