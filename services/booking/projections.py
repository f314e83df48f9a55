"""Read models of the booking service: the booking list/detail view."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Tracking
from eventsourcing.projection import Projection

from services.booking.application import BookingApplication
from services.booking.domain import Booking
from shared.errors import Invalid
from shared.feed import ProjectionSpec
from shared.views import SqlView


def iso(moment: datetime) -> str:
    """Fixed-width UTC timestamps: they sort as text in both databases."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def encode_cursor(*parts: str) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, size: int) -> list[str]:
    try:
        parts = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:
        raise Invalid("The cursor is not one this service gave out.", code="invalid_cursor") from None
    if not isinstance(parts, list) or len(parts) != size or not all(isinstance(p, str) for p in parts):
        raise Invalid("The cursor is not one this service gave out.", code="invalid_cursor")
    return parts


def decode_page_cursor(cursor: str) -> int:
    """The position a page ends at; checked, since it goes into an SQL parameter."""
    [position] = decode_cursor(cursor, 1)
    if not (position.isascii() and position.isdigit() and int(position) < 2**63):
        raise Invalid("The cursor is not one this service gave out.", code="invalid_cursor")
    return int(position)


class BookingSummaries(SqlView):
    """One row per booking: what list and detail queries need, scoped by the indexed party columns.

    Lists run in the order the requests were committed to the event store (`requested_position`,
    the notification id of BookingRequested): a booking committed later always sorts after every
    booking already visible, so a client paging through never misses one. Timestamps would not
    do: they come from the clock of whichever instance ran the command, before the commit.
    """

    tables = (
        "CREATE TABLE IF NOT EXISTS booking_summaries ("
        " booking_id TEXT PRIMARY KEY, product_id TEXT NOT NULL, provider_id TEXT NOT NULL,"
        " participant_id TEXT NOT NULL, employer_id TEXT, state TEXT NOT NULL, status TEXT NOT NULL,"
        " version INTEGER NOT NULL, participant TEXT NOT NULL, results_consent INTEGER NOT NULL,"
        " review TEXT, certificate TEXT, requested_at TEXT NOT NULL, updated_at TEXT NOT NULL,"
        " requested_position BIGINT NOT NULL UNIQUE)",
        "CREATE INDEX IF NOT EXISTS booking_summaries_provider ON booking_summaries (provider_id, requested_position)",
        "CREATE INDEX IF NOT EXISTS booking_summaries_participant"
        " ON booking_summaries (participant_id, requested_position)",
        "CREATE INDEX IF NOT EXISTS booking_summaries_employer ON booking_summaries (employer_id, requested_position)",
        "CREATE INDEX IF NOT EXISTS booking_summaries_product ON booking_summaries (product_id, requested_position)",
    )
    table_names = ("booking_summaries",)

    def insert_booking(self, tracking: Tracking, row: dict[str, Any]) -> None:
        columns = ", ".join(row)
        values = ", ".join(f":{c}" for c in row)
        self.record(
            tracking,
            lambda cur: self.execute(
                cur, f"INSERT INTO booking_summaries ({columns}) VALUES ({values}) ON CONFLICT DO NOTHING", row
            ),
        )

    def update_booking(self, tracking: Tracking, booking_id: str, version: int, changes: dict[str, Any]) -> None:
        assignments = ", ".join(f"{c} = :{c}" for c in changes)
        params = {**changes, "booking_id": booking_id, "version": version}
        self.record(
            tracking,
            lambda cur: self.execute(
                cur,
                f"UPDATE booking_summaries SET {assignments}, version = :version "
                "WHERE booking_id = :booking_id AND version < :version",
                params,
            ),
        )

    def get(self, booking_id: str) -> dict[str, Any] | None:
        return self.fetch_one("SELECT * FROM booking_summaries WHERE booking_id = :id", {"id": booking_id})

    def page(self, *, filters: dict[str, str], cursor: str | None, limit: int) -> tuple[list[dict[str, Any]], str | None]:
        """Keyset pagination in commit order: stable while rows are added."""
        clauses = [f"{column} = :{column}" for column in filters]
        params: dict[str, Any] = dict(filters)
        if cursor:
            clauses.append("requested_position > :after")
            params["after"] = decode_page_cursor(cursor)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.fetch_all(
            f"SELECT * FROM booking_summaries {where} ORDER BY requested_position LIMIT :limit",
            params | {"limit": limit + 1},
        )
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_cursor(str(rows[-1]["requested_position"]))
        return rows, next_cursor


class BookingSummaryProjection(Projection[BookingSummaries]):
    name = "booking_summaries"

    @singledispatchmethod
    def process_event(self, domain_event: DomainEventProtocol[UUID], tracking: Tracking) -> None:
        """Events that do not change a summary still advance the position."""
        self.view.record(tracking)

    @process_event.register(Booking.BookingRequested)
    def _requested(self, event: Any, tracking: Tracking) -> None:
        self.view.insert_booking(
            tracking,
            {
                "booking_id": str(event.originator_id),
                "product_id": str(event.product_id),
                "provider_id": str(event.provider_id),
                "participant_id": event.participant["id"],
                "employer_id": event.employer_id,
                "state": "requested",
                "status": "unknown",
                "version": event.originator_version,
                "participant": json.dumps(event.participant),
                "results_consent": 0,
                "review": None,
                "certificate": None,
                "requested_at": iso(event.timestamp),
                "updated_at": iso(event.timestamp),
                "requested_position": tracking.notification_id,
            },
        )

    def _update(self, event: Any, tracking: Tracking, **changes: Any) -> None:
        self.view.update_booking(
            tracking,
            str(event.originator_id),
            event.originator_version,
            {**changes, "updated_at": iso(event.timestamp)},
        )

    @process_event.register(Booking.Accepted)
    def _accepted(self, event: Any, tracking: Tracking) -> None:
        self._update(event, tracking, state="accepted", status="enrolled")

    @process_event.register(Booking.Declined)
    def _declined(self, event: Any, tracking: Tracking) -> None:
        self._update(event, tracking, state="declined")

    @process_event.register(Booking.Cancelled)
    def _cancelled(self, event: Any, tracking: Tracking) -> None:
        self._update(event, tracking, state="cancelled")

    @process_event.register(Booking.StatusChanged)
    def _status_changed(self, event: Any, tracking: Tracking) -> None:
        self._update(event, tracking, status=event.new_status)

    @process_event.register(Booking.ResultsConsentGiven)
    def _consent_given(self, event: Any, tracking: Tracking) -> None:
        self._update(event, tracking, results_consent=1)

    @process_event.register(Booking.ResultsConsentWithdrawn)
    def _consent_withdrawn(self, event: Any, tracking: Tracking) -> None:
        self._update(event, tracking, results_consent=0)

    @process_event.register(Booking.ReviewSubmitted)
    def _reviewed(self, event: Any, tracking: Tracking) -> None:
        review = {"rating": event.rating, "text": event.text, "submitted_at": iso(event.timestamp)}
        self._update(event, tracking, review=json.dumps(review))

    @process_event.register(Booking.CertificateUploaded)
    def _uploaded(self, event: Any, tracking: Tracking) -> None:
        certificate = {
            "certificate_id": str(event.certificate_id),
            "sha256": event.sha256,
            "size": event.size,
            "page_count": event.page_count,
            "file_name": event.file_name,
            "contains_results": event.contains_results,
            "certification_name": event.certification_name,
            "issued_at": iso(event.issued_at),
        }
        self._update(event, tracking, certificate=json.dumps(certificate))

    @process_event.register(Booking.CertificateVisibilityChanged)
    def _visibility_changed(self, event: Any, tracking: Tracking) -> None:
        # Not summarised, but the version must follow: clients send it back in If-Match.
        self._update(event, tracking)

    @process_event.register(Booking.CertificateRevoked)
    def _revoked(self, event: Any, tracking: Tracking) -> None:
        # Only the active certificate is summarised; a revoked one leaves the summary.
        self.view.record(
            tracking,
            lambda cur: self.view.execute(
                cur,
                "UPDATE booking_summaries SET version = :version, updated_at = :at, "
                "certificate = CASE WHEN certificate LIKE :pattern THEN NULL ELSE certificate END "
                "WHERE booking_id = :booking_id AND version < :version",
                {
                    "booking_id": str(event.originator_id),
                    "version": event.originator_version,
                    "at": iso(event.timestamp),
                    "pattern": f'%"certificate_id": "{event.certificate_id}"%',
                },
            ),
        )


BOOKING_SUMMARIES = ProjectionSpec(BookingSummaryProjection, BookingSummaries, BookingApplication)
