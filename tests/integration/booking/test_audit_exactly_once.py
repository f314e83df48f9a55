"""Exactly once, proven: the audit projection runs in its own OS process (`projections run audit`)
over a backlog of 3,000+ events, is killed with SIGKILL part-way, restarted, and must then hold
exactly one entry per event, the same entries as a clean rebuild. On PostgreSQL also: its LISTEN
connections are cut while events keep arriving; the supervisor resubscribes and loses nothing."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from services.booking.application import BookingApplication
from services.booking.audit import AUDIT_BOOKING, AUDIT_PROJECTIONS, AuditTrail
from services.booking.domain import Actor, Booking, CertificateFile, Product, Provider, Status
from services.certificate.application import CertificateApplication
from shared.auth import Principal, Role
from shared.eventstore import eventsourcing_env
from shared.feed import SMALL_POOL, open_view
from shared.projection_cli import migrate, rebuild, service_parts
from shared.settings import ServiceSettings

BACKLOG_BOOKINGS = 300  # ten events each: 3,000 booking events
DOWNLOADS = 60
CATCH_UP_TIMEOUT_S = 240
STAFF = Actor("staff-1", "staff")


@pytest.fixture
def settings(service_env: dict[str, Any]) -> ServiceSettings:
    settings = ServiceSettings(**service_env)
    migrate(settings, service_parts(["booking"]), out=io.StringIO())
    return settings


@pytest.fixture
def booking_app(settings: ServiceSettings) -> Iterator[BookingApplication]:
    app = BookingApplication(env=eventsourcing_env(settings, BookingApplication.name) | SMALL_POOL)
    yield app
    app.close()


@pytest.fixture
def certificate_app(settings: ServiceSettings) -> Iterator[CertificateApplication]:
    app = CertificateApplication(env=eventsourcing_env(settings, CertificateApplication.name) | SMALL_POOL)
    yield app
    app.close()


@pytest.fixture
def audit_view(settings: ServiceSettings) -> Iterator[AuditTrail]:
    view = open_view(settings, AUDIT_BOOKING, small_pool=True)
    yield view
    view.datastore.close()


# --- writing events ------------------------------------------------------------------------------


def catalog(app: BookingApplication) -> Product:
    provider = Provider(id=uuid4(), name="Kurs AB", linkedin_organization_id="1337", logo_url=None,
                        actor_id=STAFF.id, actor_role=STAFF.role)  # fmt: skip
    product = Product(
        id=uuid4(), provider_id=provider.id, title="Projektledning", actor_id=STAFF.id, actor_role=STAFF.role
    )
    product.define_certification("Certifierad projektledare", STAFF)
    app.save(provider, product)
    return product


def full_booking(product: Product, number: int) -> tuple[Booking, UUID]:
    """Ten events: request, accept, two statuses, consent, upload, review, two statuses (the second
    revokes the certificate), a new upload. Returns the booking and its active certificate."""
    participant = Actor(f"participant-{number}", "participant")
    booking = Booking(
        id=uuid4(), product_id=product.id, provider_id=product.provider_id,
        participant={"id": participant.id, "name": "Anna Svensson", "email": "anna@example.se", "locale": "sv"},
        employer_id="acme", actor_id=participant.id, actor_role=participant.role,
    )  # fmt: skip
    booking.accept(STAFF)
    booking.change_status(Status.STARTED, STAFF)
    booking.change_status(Status.COMPLETED, STAFF)
    booking.give_results_consent(participant)
    booking.upload_certificate(certificate(), "Certifierad projektledare", datetime.now(UTC), STAFF)
    booking.submit_review(4, "Bra kurs", participant)
    booking.change_status(Status.FAILED, STAFF)
    booking.change_status(Status.COMPLETED, STAFF)
    active = certificate()
    booking.upload_certificate(active, "Certifierad projektledare", datetime.now(UTC), STAFF)
    return booking, active.certificate_id


def certificate() -> CertificateFile:
    return CertificateFile(uuid4(), uuid4().hex * 2, 2048, 1, "intyg.pdf", contains_results=False)


def write_bookings(
    app: BookingApplication, product: Product, count: int, *, batch: int = 50
) -> list[tuple[UUID, UUID]]:
    """`count` bookings, saved `batch` at a time (one transaction each); their (booking, certificate) ids."""
    written = []
    pending: list[Booking] = []
    for number in range(count):
        booking, certificate_id = full_booking(product, number)
        pending.append(booking)
        written.append((booking.id, certificate_id))
        if len(pending) == batch or number == count - 1:
            app.save(*pending)
            pending = []
    return written


def write_downloads(app: CertificateApplication, issued: list[tuple[UUID, UUID]], count: int) -> None:
    for number in range(count):
        booking_id, certificate_id = issued[number % len(issued)]
        reader = Principal(sub=f"boss-{number % 3}", role=Role.EMPLOYER, employer_id="acme")
        app.record_download(reader, certificate_id, booking_id)


# --- the projection in its own process -----------------------------------------------------------


class ProjectionProcess:
    """`projections run audit` as a separate OS process on the test's stores."""

    def __init__(self, settings: ServiceSettings, log_path: Path) -> None:
        self.env = {
            **os.environ,
            "DATA_DIR": str(settings.data_dir),
            "DATABASE_URL": settings.database_url,
            "LOG_LEVEL": "INFO",
        }
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ProjectionProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "shared.projection_cli", "run", "audit"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def projection_process(settings: ServiceSettings, tmp_path: Path) -> Iterator[Callable[[], ProjectionProcess]]:
    started: list[ProjectionProcess] = []

    def start() -> ProjectionProcess:
        started.append(ProjectionProcess(settings, tmp_path / "projection.log").start())
        return started[-1]

    yield start
    for process in started:
        if process.process is not None and process.process.poll() is None:
            process.kill()


def position(view: AuditTrail, upstream: str) -> int:
    return view.max_tracking_id(upstream) or 0


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, process: ProjectionProcess) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.process is not None
        if process.process.poll() is not None:
            pytest.fail(f"the projection process exited ({process.process.returncode}) before {what}:\n{process.log()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}:\n{process.log()[-5000:]}")
        time.sleep(0.005)


def targets(booking_app: BookingApplication, certificate_app: CertificateApplication) -> dict[str, int]:
    return {
        BookingApplication.name: booking_app.recorder.max_notification_id() or 0,
        CertificateApplication.name: certificate_app.recorder.max_notification_id() or 0,
    }


def wait_caught_up(view: AuditTrail, goal: dict[str, int], process: ProjectionProcess) -> None:
    wait_until(
        lambda: all(position(view, upstream) >= at for upstream, at in goal.items()),
        CATCH_UP_TIMEOUT_S,
        f"the audit trail reached {goal}",
        process,
    )


# --- what the trail must hold --------------------------------------------------------------------


def audited_notifications(
    booking_app: BookingApplication, certificate_app: CertificateApplication
) -> set[tuple[str, int]]:
    """One entry per event of both upstreams, except access-log openings (bookkeeping, not actions)."""
    expected = set()
    for name, app in ((BookingApplication.name, booking_app), (CertificateApplication.name, certificate_app)):
        for notification in app.recorder.select_notifications(start=1, limit=1_000_000):
            if not notification.topic.endswith(".AccessLogOpened"):
                expected.add((name, notification.id))
    return expected


def trail_rows(view: AuditTrail) -> Counter[tuple[Any, ...]]:
    rows = view.fetch_all(
        "SELECT source, notification_id, event_type, booking_id, actor_id, actor_role, occurred_at, summary"
        " FROM audit_entries"
    )
    return Counter(tuple(row.values()) for row in rows)


def assert_exactly_once_and_same_as_rebuild(
    settings: ServiceSettings,
    view: AuditTrail,
    booking_app: BookingApplication,
    certificate_app: CertificateApplication,
) -> None:
    recorded = trail_rows(view)
    keys = Counter((row[0], row[1]) for row in recorded.elements())
    assert max(keys.values()) == 1, "an event was recorded twice"
    assert set(keys) == audited_notifications(booking_app, certificate_app), "an event is missing"
    downloads = [row for row in recorded if row[2] == "CertificateDownloaded"]
    assert downloads and all(row[3] is not None for row in downloads), "a download lost its booking"

    rebuilt_positions = rebuild(settings, AUDIT_PROJECTIONS, timeout_s=CATCH_UP_TIMEOUT_S, progress=io.StringIO())
    assert all(p.lag == 0 for p in rebuilt_positions)
    assert trail_rows(view) == recorded


# --- the tests -----------------------------------------------------------------------------------


def test_a_killed_projection_process_resumes_without_doubles_or_gaps(
    settings: ServiceSettings,
    booking_app: BookingApplication,
    certificate_app: CertificateApplication,
    audit_view: AuditTrail,
    projection_process: Callable[[], ProjectionProcess],
) -> None:
    issued = write_bookings(booking_app, catalog(booking_app), BACKLOG_BOOKINGS)
    write_downloads(certificate_app, issued, DOWNLOADS)
    goal = targets(booking_app, certificate_app)
    assert goal[BookingApplication.name] >= 3000

    first = projection_process()
    backlog = goal[BookingApplication.name]
    wait_until(
        lambda: position(audit_view, BookingApplication.name) >= backlog // 10,
        CATCH_UP_TIMEOUT_S,
        "a tenth of the backlog was projected",
        first,
    )
    first.kill()
    killed_at = position(audit_view, BookingApplication.name)
    assert backlog // 10 <= killed_at <= backlog * 9 // 10, f"killed at {killed_at} of {backlog}: not mid-backlog"

    second = projection_process()
    wait_caught_up(audit_view, goal, second)
    assert second.stop() == 0, second.log()

    assert_exactly_once_and_same_as_rebuild(settings, audit_view, booking_app, certificate_app)


@pytest.mark.parametrize("store", ["postgres"])
def test_cut_listen_connections_are_resubscribed_while_events_keep_arriving(
    settings: ServiceSettings,
    booking_app: BookingApplication,
    certificate_app: CertificateApplication,
    audit_view: AuditTrail,
    projection_process: Callable[[], ProjectionProcess],
) -> None:
    product = catalog(booking_app)
    issued = write_bookings(booking_app, product, 20)
    write_downloads(certificate_app, issued, 5)
    process = projection_process()
    wait_caught_up(audit_view, targets(booking_app, certificate_app), process)
    with psycopg.connect(settings.database_url, autocommit=True) as admin:
        first_listeners = listeners(admin)
        assert len(first_listeners) == 2, "one LISTEN per upstream"

        failures: list[BaseException] = []
        writing = threading.Thread(target=keep_writing, args=(booking_app, certificate_app, product, issued, failures))
        writing.start()
        cut: set[int] = set()
        for _ in range(2):  # cut, wait for both to come back, cut again
            time.sleep(0.3)
            current = listeners(admin)
            admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (sorted(current),))
            cut |= current
            wait_until(
                lambda cut=frozenset(cut): len(listeners(admin) - cut) == 2,
                CATCH_UP_TIMEOUT_S,
                "both subscriptions came back",
                process,
            )
        writing.join()
    assert not failures, failures

    wait_caught_up(audit_view, targets(booking_app, certificate_app), process)
    assert process.stop() == 0, process.log()
    assert "restarting" in process.log()
    assert_exactly_once_and_same_as_rebuild(settings, audit_view, booking_app, certificate_app)


def listeners(admin: psycopg.Connection[Any]) -> set[int]:
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN %'"
    ).fetchall()
    return {row[0] for row in rows}


def keep_writing(
    booking_app: BookingApplication,
    certificate_app: CertificateApplication,
    product: Product,
    issued: list[tuple[UUID, UUID]],
    failures: list[BaseException],
    rounds: int = 40,
) -> None:
    """Events arriving all the time, on both upstreams, for a second or two."""
    try:
        for number in range(rounds):
            booking_app.save(full_booking(product, 10_000 + number)[0])
            write_downloads(certificate_app, issued[number % len(issued) :], 1)
            time.sleep(0.03)
    except BaseException as error:  # reported by the test thread
        failures.append(error)
