"""Concurrent writers keep commit order = notification-id order, so a tailing projection misses nothing.

PostgreSQL only: the trap is PostgreSQL's (a sequence hands out ids at insert time, transactions
commit in any order). Eight writer threads on two applications (two recorders, like two server
processes) change statuses of shared bookings, conflicts included, while the booking-summaries
projection tails the log. Then: the projection processed every committed event, in id order,
and its rows equal a clean rebuild from the same events.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

import psycopg
import pytest

from services.booking.application import BookingApplication
from services.booking.domain import SETTABLE_STATUSES, Status
from services.booking.projections import BOOKING_SUMMARIES, BookingSummaryProjection
from services.booking.settings import BookingSettings
from shared.auth import Principal, Role
from shared.eventstore import eventsourcing_env
from shared.feed import EventBatch, ProjectionSpec, SupervisedProjection, open_view
from tests.fixtures.stores import AUTH_SECRET

pytestmark = pytest.mark.postgres

WRITERS = 8
APPLICATIONS = 2
BOOKINGS = 40
COMMANDS_PER_WRITER = 60
STAFF = Principal(sub="staff-1", role=Role.STAFF)


class TailingSummaries(BookingSummaryProjection):
    """The real projection, noting every position it processes."""

    name = BookingSummaryProjection.name
    positions: ClassVar[list[int]] = []

    def process_batch(self, events: EventBatch) -> None:
        type(self).positions.extend(tracking.notification_id for _, tracking in events)
        super().process_batch(events)


def seed_bookings(app: BookingApplication) -> list[UUID]:
    provider = app.register_provider(
        STAFF, provider_id=None, name="Kurs AB", linkedin_organization_id=None, logo_url=None
    )
    product = app.register_product(STAFF, product_id=None, provider_id=provider.aggregate.id, title="Projektledning")
    ids = []
    for n in range(BOOKINGS):
        participant = {"id": f"p{n}", "name": "Anna Svensson", "email": f"p{n}@example.se", "locale": "sv"}
        booking = app.request_booking(
            STAFF, booking_id=None, product_id=product.aggregate.id, participant=participant, employer_id=None
        )
        app.accept(STAFF, booking.aggregate.id)
        ids.append(booking.aggregate.id)
    return ids


def write_concurrently(apps: list[BookingApplication], bookings: list[UUID]) -> None:
    statuses = sorted(SETTABLE_STATUSES)
    failures: list[BaseException] = []

    def writer(app: BookingApplication, seed: int) -> None:
        chooser = random.Random(seed)
        try:
            for _ in range(COMMANDS_PER_WRITER):
                app.change_status(STAFF, chooser.choice(bookings), Status(chooser.choice(statuses)))
        except BaseException as error:  # reported below: a failed writer fails the test
            failures.append(error)

    threads = [threading.Thread(target=writer, args=(apps[n % len(apps)], n)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures


def run_until_caught_up(settings: BookingSettings, spec: ProjectionSpec, head: int, timeout: float = 60) -> None:
    projection = SupervisedProjection(settings, spec).start()
    view = open_view(settings, spec)
    try:
        deadline = time.monotonic() + timeout
        while (view.max_tracking_id(BookingApplication.name) or 0) < head:
            assert time.monotonic() < deadline, f"the projection did not reach {head}"
            time.sleep(0.02)
    finally:
        projection.stop()
        view.datastore.close()


def summaries(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT * FROM booking_summaries ORDER BY booking_id").fetchall()


def committed_positions(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT notification_id FROM booking_events ORDER BY notification_id").fetchall()
    return [row[0] for row in rows]


def test_concurrent_writers_keep_commit_order(postgres_url: str, tmp_path: Path) -> None:
    settings = BookingSettings(database_url=postgres_url, auth_secret=AUTH_SECRET, data_dir=tmp_path)
    apps = [BookingApplication(env=eventsourcing_env(settings, BookingApplication.name)) for _ in range(APPLICATIONS)]
    bookings = seed_bookings(apps[0])
    TailingSummaries.positions = []
    tailing = SupervisedProjection(
        settings, ProjectionSpec(TailingSummaries, BOOKING_SUMMARIES.view, BookingApplication)
    )
    tailing.start()
    try:
        assert tailing.running.wait(10)
        write_concurrently(apps, bookings)
        head = apps[0].recorder.max_notification_id() or 0
        view = open_view(settings, BOOKING_SUMMARIES)
        deadline = time.monotonic() + 60
        while (view.max_tracking_id(BookingApplication.name) or 0) < head:
            assert time.monotonic() < deadline, "the tailing projection did not catch up"
            time.sleep(0.02)
    finally:
        tailing.stop()
        for app in apps:
            app.close()

    committed = committed_positions(postgres_url)
    assert len(committed) > BOOKINGS * 2 + WRITERS * COMMANDS_PER_WRITER // 2, "the writers changed too little"
    assert TailingSummaries.positions == committed, "the tailing projection skipped or reordered events"
    tailed = summaries(postgres_url)

    view.reset((BookingApplication.name,))
    view.datastore.close()
    assert summaries(postgres_url) == []
    run_until_caught_up(settings, BOOKING_SUMMARIES, head)
    assert summaries(postgres_url) == tailed
