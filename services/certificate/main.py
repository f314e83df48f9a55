"""Composition root of the certificate service: `create_app(settings)` wires everything, `serve()` runs it."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta

from eventsourcing.persistence import PersistenceError
from fastapi import FastAPI

from services.booking.application import BookingApplication
from services.certificate import api, verify_api
from services.certificate.application import CertificateApplication
from services.certificate.booking_gateway import BookingGateway, BookingUnavailable
from services.certificate.pdfcheck import PdfInspector
from services.certificate.projections import CERTIFICATE_REGISTRY
from services.certificate.settings import CertificateSettings
from services.certificate.storage import ObjectStorage, StorageUnavailable, storage_from_settings
from services.certificate.uploads import CertificateIssuer, UploadIntents
from shared.auth import service_token
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
from shared.ratelimit import ClientRateLimit, TokenBuckets
from shared.service import ReadinessChecks, create_service_app, run_api
from shared.settings import load_settings
from shared.views import open_store

log = logging.getLogger(__name__)

# Every read model the certificate service keeps; its worker runs them all.
PROJECTIONS: list[ProjectionSpec] = [CERTIFICATE_REGISTRY]
# For `projections migrate`: what the service keeps besides its projections and idempotency keys.
APPLICATIONS = [CertificateApplication]
STORES = [(UploadIntents, "certificate_uploads")]

# Room for the multipart framing around the file (boundaries, part headers, small fields).
MULTIPART_OVERHEAD_BYTES = 64 * 1024
_UPLOAD_PATH = re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", api.UPLOAD_PATH) + "$")


def create_app(settings: CertificateSettings) -> FastAPI:
    def body_limit_for(path: str) -> int:
        if _UPLOAD_PATH.match(path) or path == verify_api.VERIFY_FILE_PATH:
            return settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
        return settings.max_request_bytes

    return create_service_app(
        service="certificate",
        title="Certificate service",
        description="PDF certificates: upload to object storage, registry, audited download, revocation,"
        " public verification with signed answers.",
        settings=settings,
        # Public verification first: the busiest routes, matched before any other is tried (no path overlaps).
        routers=[verify_api.verify, api.certificates],
        resources=lambda app: _resources(app, settings),
        body_limit_for=body_limit_for,
    )


def object_storage(settings: CertificateSettings) -> ObjectStorage:
    return storage_from_settings(
        s3_endpoint=settings.s3_endpoint,
        s3_access_key=settings.s3_access_key,
        s3_secret_key=settings.s3_secret_key.get_secret_value(),
        s3_bucket=settings.s3_bucket,
        s3_secure=settings.s3_secure,
        s3_region=settings.s3_region,
        data_dir=settings.data_dir,
    )


@contextmanager
def _resources(app: FastAPI, settings: CertificateSettings) -> Iterator[ReadinessChecks]:
    with ExitStack() as stack:
        certificate_app = CertificateApplication(env=eventsourcing_env(settings, CertificateApplication.name))
        stack.callback(certificate_app.close)
        registry = open_view(settings, CERTIFICATE_REGISTRY)
        stack.callback(registry.datastore.close)
        booking_events = open_event_recorder(settings, BookingApplication)
        stack.callback(booking_events.datastore.close)
        storage = object_storage(settings)
        _prepare(storage)
        inspector = stack.enter_context(
            PdfInspector(
                max_bytes=settings.max_upload_bytes,
                timeout_s=settings.pdf_check_timeout_s,
                workers=settings.pdf_check_workers,
                remembered_files=settings.pdf_check_remembered_files,
            )
        )
        gateway = BookingGateway(
            settings.booking_url,
            timeout_s=settings.booking_timeout_s,
            service_token=lambda: service_token(settings.dev_auth_secret, "certificate"),
        )
        intents = open_store(settings, UploadIntents, "certificate_uploads")
        stack.callback(intents.datastore.close)
        app.state.certificate_app = certificate_app
        app.state.certificate_registry = registry
        app.state.booking_events = booking_events
        app.state.object_storage = storage
        app.state.booking_gateway = gateway
        app.state.certificate_issuer = CertificateIssuer(
            storage=storage,
            inspector=inspector,
            intents=intents,
            registry=registry,
            booking=gateway,
            grace=timedelta(seconds=settings.orphan_grace_s),
        )
        app.state.signed_answers = verify_api.signed_answers(settings, registry, booking_events)
        app.state.verify_rate_limit = ClientRateLimit(
            TokenBuckets(per_minute=settings.verify_rate_per_minute, burst=settings.verify_rate_burst),
            settings.trusted_proxies,
        )
        app.state.idempotency = open_store(settings, IdempotencyStore, "certificate_idempotency")
        stack.callback(app.state.idempotency.datastore.close)
        lag = ProjectionLagCollector(
            lambda: projection_positions(
                PROJECTIONS, {CERTIFICATE_REGISTRY.name: registry}, {BookingApplication.name: booking_events}
            )
        )
        app.state.observability.registry.register(lag)
        stack.callback(app.state.observability.registry.unregister, lag)
        events_written = EventsWrittenCollector({CertificateApplication.name: certificate_app.recorder})
        app.state.observability.registry.register(events_written)
        stack.callback(app.state.observability.registry.unregister, events_written)
        if settings.run_workers:
            workers = [SupervisedProjection(settings, spec).start() for spec in PROJECTIONS]
            stack.callback(_stop_all, workers)
        yield {
            "database": lambda: _check_event_store(certificate_app),
            "object_storage": lambda: _check_storage(storage),
            "booking_service": lambda: _check_booking(gateway),
        }


def _stop_all(workers: list[SupervisedProjection]) -> None:
    for worker in workers:
        worker.request_stop()  # all at once: each takes up to a second to notice
    for worker in workers:
        worker.stop()


def _prepare(storage: ObjectStorage) -> None:
    """Creates the bucket or folder; an unreachable storage must not stop the service (readiness tells)."""
    try:
        storage.ensure_ready()
    except StorageUnavailable as error:
        log.warning("object storage not ready at start-up: %s", error)


def _check_event_store(certificate_app: CertificateApplication) -> None:
    try:
        certificate_app.recorder.max_notification_id()
    except PersistenceError as error:
        raise DependencyDown("event store unavailable") from error


def _check_storage(storage: ObjectStorage) -> None:
    try:
        storage.ping()
    except StorageUnavailable as error:
        raise DependencyDown("object storage unavailable") from error


def _check_booking(gateway: BookingGateway) -> None:
    try:
        gateway.ping()
    except BookingUnavailable as error:
        raise DependencyDown("booking service unavailable") from error


def serve() -> None:
    settings = load_settings(CertificateSettings)
    assert isinstance(settings, CertificateSettings)
    configure_logging(settings.log_level, settings.log_format)
    run_api(create_app(settings), host=settings.host, port=settings.certificate_port)
