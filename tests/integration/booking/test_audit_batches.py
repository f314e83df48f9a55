"""Set-based batches of the audit trail: one entry per event, in log order, as one event at a time
would append them; a download's booking found in the batch that opened its access log or before."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.persistence import Tracking

from services.booking.audit import AUDIT_BOOKING, AuditProjection, AuditTrail
from services.booking.domain import Status
from services.booking.settings import BookingSettings
from services.certificate.domain import CertificateAccessLog
from shared.feed import open_view
from tests.fixtures.booking_histories import booking_after, log_of


@pytest.fixture
def trail(service_env: dict[str, Any]) -> Iterator[AuditTrail]:
    view = open_view(BookingSettings(**service_env, run_workers=False), AUDIT_BOOKING)
    yield view
    view.datastore.close()  # type: ignore[attr-defined]


def entries(trail: AuditTrail) -> list[dict[str, Any]]:
    return trail.fetch_all("SELECT * FROM audit_entries ORDER BY id")


def test_a_batch_appends_what_one_event_at_a_time_would(trail: AuditTrail) -> None:
    booking = booking_after([("accept", None), ("status", Status.STARTED), ("status", Status.COMPLETED)])
    log = log_of(list(booking.collect_events()))
    projection = AuditProjection(view=trail)

    projection.process_batch(log)
    batched = entries(trail)
    trail.reset(("booking",))
    for logged in log:
        projection.process_batch([logged])

    def without_ids(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{column: value for column, value in row.items() if column != "id"} for row in rows]

    assert without_ids(entries(trail)) == without_ids(batched)
    assert [row["notification_id"] for row in batched] == [1, 2, 3, 4]  # ids in log order
    assert [row["event_type"] for row in batched] == ["BookingRequested", "Accepted", "StatusChanged", "StatusChanged"]


def test_a_download_takes_its_booking_from_an_access_log_opened_in_its_batch_or_before(trail: AuditTrail) -> None:
    booking_id, certificate_id = uuid4(), uuid4()
    access_log = CertificateAccessLog(id=certificate_id, booking_id=booking_id)
    access_log.record_download("boss-1", "employer")
    opened, first_download = access_log.collect_events()
    access_log.record_download("boss-2", "employer")
    [second_download] = access_log.collect_events()
    unknown_log = CertificateAccessLog(id=uuid4(), booking_id=uuid4())
    unknown_log.record_download("boss-3", "employer")
    _, unknown_download = unknown_log.collect_events()
    projection = AuditProjection(view=trail)

    projection.process_batch([(opened, Tracking("certificate", 1)), (first_download, Tracking("certificate", 2))])
    projection.process_batch(
        [(second_download, Tracking("certificate", 3)), (unknown_download, Tracking("certificate", 5))]
    )

    rows = entries(trail)
    assert [(row["actor_id"], row["booking_id"]) for row in rows] == [
        ("boss-1", str(booking_id)), ("boss-2", str(booking_id)), ("boss-3", None),
    ]  # fmt: skip
    assert trail.max_tracking_id("certificate") == 5  # type: ignore[attr-defined]
