"""Read models of the booking service: the booking list/detail view."""

from __future__ import annotations

import base64
import json
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from functools import singledispatch
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Tracking

from services.booking.application import BookingApplication
from services.booking.domain import Booking
from shared.errors import Invalid
from shared.feed import BatchProjection, EventBatch, ProjectionSpec
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


Summary = dict[str, Any]
"""A row of booking_summaries, by column."""

SUMMARY_COLUMNS = (
    "booking_id", "product_id", "provider_id", "participant_id", "employer_id", "state", "status", "version",
    "participant", "results_consent", "review", "certificate", "requested_at", "updated_at", "requested_position",
)  # fmt: skip

# A summary is written whole; an older version never overwrites a newer one.
_NEWER_VERSION_WINS = (
    "ON CONFLICT (booking_id) DO UPDATE SET "
    + ", ".join(f"{column} = excluded.{column}" for column in SUMMARY_COLUMNS if column != "booking_id")
    + " WHERE booking_summaries.version < excluded.version"
)


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

    # --- writes (by the projection, inside its batch's transaction) ---------------------------

    def summaries_of(self, cursor: Any, booking_ids: Collection[str]) -> dict[str, Summary]:
        """The summaries of `booking_ids` that exist, by booking id."""
        rows = self.fetch_where_in(
            cursor, f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM booking_summaries", "booking_id", booking_ids
        )
        return {row["booking_id"]: row for row in rows}

    def save(self, cursor: Any, summaries: Sequence[Summary]) -> None:
        """Inserts new summaries and overwrites older versions of existing ones, in one statement."""
        self.insert_rows(cursor, "booking_summaries", summaries, on_conflict=_NEWER_VERSION_WINS)

    # --- queries -------------------------------------------------------------------------------

    def get(self, booking_id: str) -> dict[str, Any] | None:
        return self.fetch_one("SELECT * FROM booking_summaries WHERE booking_id = :id", {"id": booking_id})

    def page(
        self, *, filters: dict[str, str], cursor: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
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


# --- the fold: a summary after an event (pure) ------------------------------------------------


@singledispatch
def summarise(event: Any, summary: Summary | None, position: int) -> Summary | None:
    """`summary` (None: the booking has none yet) after `event`, the event at `position` of the
    booking log. Events that change no summary leave it as it is."""
    return summary


@summarise.register(Booking.BookingRequested)
def _requested(event: Any, summary: Summary | None, position: int) -> Summary | None:
    if summary is not None:  # summarised already: the first request stands
        return summary
    requested_at = iso(event.timestamp)
    return {
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
        "requested_at": requested_at,
        "updated_at": requested_at,
        "requested_position": position,
    }


def _updated(event: Any, summary: Summary | None, **changes: Any) -> Summary | None:
    """`changes`, the event's version and time, unless the summary has seen this version already."""
    if summary is None or summary["version"] >= event.originator_version:
        return summary
    return {**summary, **changes, "version": event.originator_version, "updated_at": iso(event.timestamp)}


@summarise.register(Booking.Accepted)
def _accepted(event: Any, summary: Summary | None, position: int) -> Summary | None:
    return _updated(event, summary, state="accepted", status="enrolled")


@summarise.register(Booking.Declined)
def _declined(event: Any, summary: Summary | None, position: int) -> Summary | None:
    return _updated(event, summary, state="declined")


@summarise.register(Booking.Cancelled)
def _cancelled(event: Any, summary: Summary | None, position: int) -> Summary | None:
    return _updated(event, summary, state="cancelled")


@summarise.register(Booking.StatusChanged)
def _status_changed(event: Any, summary: Summary | None, position: int) -> Summary | None:
    return _updated(event, summary, status=event.new_status)


@summarise.register(Booking.ResultsConsentGiven)
def _consent_given(event: Any, summary: Summary | None, position: int) -> Summary | None:
    return _updated(event, summary, results_consent=1)


@summarise.register(Booking.ResultsConsentWithdrawn)
def _consent_withdrawn(event: Any, summary: Summary | None, position: int) -> Summary | None:
    return _updated(event, summary, results_consent=0)


@summarise.register(Booking.ReviewSubmitted)
def _reviewed(event: Any, summary: Summary | None, position: int) -> Summary | None:
    review = {"rating": event.rating, "text": event.text, "submitted_at": iso(event.timestamp)}
    return _updated(event, summary, review=json.dumps(review))


@summarise.register(Booking.CertificateUploaded)
def _uploaded(event: Any, summary: Summary | None, position: int) -> Summary | None:
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
    return _updated(event, summary, certificate=json.dumps(certificate))


@summarise.register(Booking.CertificateVisibilityChanged)
def _visibility_changed(event: Any, summary: Summary | None, position: int) -> Summary | None:
    # Not summarised, but the version must follow: clients send it back in If-Match.
    return _updated(event, summary)


@summarise.register(Booking.CertificateRevoked)
def _revoked(event: Any, summary: Summary | None, position: int) -> Summary | None:
    # Only the active certificate is summarised; a revoked one leaves the summary.
    certificate = summary["certificate"] if summary else None
    if certificate and json.loads(certificate)["certificate_id"] == str(event.certificate_id):
        return _updated(event, summary, certificate=None)
    return _updated(event, summary)


class BookingSummaryProjection(BatchProjection[BookingSummaries]):
    """Each batch: the summaries it touches read in one statement, the events folded into them
    (`summarise`), the changed ones written back in one statement, with the batch's position."""

    name = "booking_summaries"

    def process_batch(self, events: EventBatch) -> None:
        booking_events = [
            (str(event.originator_id), event, tracking.notification_id)
            for event, tracking in events
            if isinstance(event, Booking.Event)
        ]
        with self.view.batch(events[-1][1]) as cursor:
            before = self.view.summaries_of(cursor, {booking_id for booking_id, _, _ in booking_events})
            after = dict(before)
            for booking_id, event, position in booking_events:
                summary = summarise(event, after.get(booking_id), position)
                if summary is not None:
                    after[booking_id] = summary
            self.view.save(cursor, [row for booking_id, row in after.items() if row != before.get(booking_id)])

    def process_event(self, domain_event: DomainEventProtocol[UUID], tracking: Tracking) -> None:
        """One event: a batch of one."""
        self.process_batch([(domain_event, tracking)])


BOOKING_SUMMARIES = ProjectionSpec(BookingSummaryProjection, BookingSummaries, BookingApplication)
