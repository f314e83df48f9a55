"""Audit trail for staff: every event of the booking and certificate services, who acted and when.

One projection ("audit") follows two upstream applications (booking, certificate) into one
append-only table; its tracking table keeps a position per upstream, and each row commits with
its position, so every event is recorded exactly once. Personal data stays out of the entries:
the participant's id identifies them; names, emails, review texts and file names are not copied.
Also here: a booking as it was at a given moment, rebuilt from its events.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import takewhile
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Tracking

from services.booking.application import BookingApplication
from services.booking.domain import Booking, Product, Provider
from services.booking.projections import decode_cursor, encode_cursor, iso
from services.certificate.application import CertificateApplication
from services.certificate.domain import CertificateAccessLog
from shared.errors import Invalid, NotFound
from shared.feed import BatchProjection, EventBatch, ProjectionSpec
from shared.views import BULK_ROWS, SqlView


def _fields(*names: str) -> Callable[[Any], dict[str, Any]]:
    return lambda event: {name: getattr(event, name) for name in names}


# What each event adds to its entry beyond who, when and which aggregate.
SUMMARIES: dict[type, Callable[[Any], dict[str, Any]]] = {
    Booking.BookingRequested: lambda event: {
        "product_id": event.product_id,
        "provider_id": event.provider_id,
        "participant_id": event.participant["id"],
        "employer_id": event.employer_id,
    },
    Booking.Accepted: _fields(),
    Booking.Declined: _fields("reason"),
    Booking.Cancelled: _fields("reason"),
    Booking.StatusChanged: _fields("old_status", "new_status"),
    Booking.ResultsConsentGiven: _fields(),
    Booking.ResultsConsentWithdrawn: _fields(),
    Booking.ReviewSubmitted: _fields("rating"),
    Booking.CertificateUploaded: _fields(
        "certificate_id", "sha256", "size", "page_count", "contains_results", "certification_name", "supersedes"
    ),
    Booking.CertificateRevoked: _fields("certificate_id", "reason"),
    Booking.CertificateVisibilityChanged: _fields("certificate_id", "public"),
    Provider.ProviderRegistered: _fields("name", "linkedin_organization_id", "logo_url"),
    Provider.LinkedInPageLinked: _fields("organization_id"),
    Product.ProductRegistered: _fields("provider_id", "title"),
    Product.CertificationDefined: _fields("name"),
    CertificateAccessLog.CertificateDownloaded: lambda event: {"certificate_id": event.originator_id},
}

AUDITED_EVENT_TYPES = frozenset(event_class.__name__ for event_class in SUMMARIES)

ENTRY_COLUMNS = (
    "id",
    "source",
    "notification_id",
    "event_type",
    "aggregate_type",
    "aggregate_id",
    "aggregate_version",
    "booking_id",
    "actor_id",
    "actor_role",
    "occurred_at",
    "summary",
)


AuditEntry = dict[str, Any]
"""A row of audit_entries, by column (but the id, which the table gives). A download's booking_id
is None here: it is its certificate's booking, found by the view (`AuditTrail.record_batch`)."""

DOWNLOADED = CertificateAccessLog.CertificateDownloaded.__name__

_NO_DETAILS = _fields()
# A summary holds no containers, so no cycles to check for (a check that doubles this encoding's cost).
_summary_json = json.JSONEncoder(separators=(",", ":"), sort_keys=True, default=str, check_circular=False).encode


def audit_entry(event: Any, tracking: Tracking) -> AuditEntry:
    # A plain dict: a rebuild makes one per event, and it is what the view inserts.
    aggregate_type, _, event_type = type(event).__qualname__.rpartition(".")
    summarise = SUMMARIES.get(type(event), _NO_DETAILS)
    aggregate_id = str(event.originator_id)
    return {
        "source": tracking.application_name,
        "notification_id": tracking.notification_id,
        "event_type": event_type,
        "aggregate_type": aggregate_type,
        "aggregate_id": aggregate_id,
        "aggregate_version": event.originator_version,
        "booking_id": aggregate_id if isinstance(event, Booking.Event) else None,
        "actor_id": getattr(event, "actor_id", None),
        "actor_role": getattr(event, "actor_role", None),
        "occurred_at": iso(event.timestamp),
        "summary": _summary_json(summarise(event)),
    }


@dataclass(frozen=True)
class AuditFilter:
    """What staff ask for; times are UTC text as stored, `since` inclusive, `until` exclusive."""

    booking_id: str | None = None
    actor_id: str | None = None
    event_type: str | None = None
    since: str | None = None
    until: str | None = None

    def where(self) -> tuple[list[str], dict[str, Any]]:
        equal = ("booking_id", "actor_id", "event_type")
        clauses = [f"{column} = :{column}" for column in equal if getattr(self, column)]
        if self.since:
            clauses.append("occurred_at >= :since")
        if self.until:
            clauses.append("occurred_at < :until")
        params = {name: value for name, value in vars(self).items() if value is not None}
        return clauses, params


class AuditTrail(SqlView):
    """The append-only audit table, plus which booking each certificate's access log belongs to."""

    tables = (
        "CREATE TABLE IF NOT EXISTS audit_entries ("
        " id {serial}, source TEXT NOT NULL, notification_id BIGINT NOT NULL, event_type TEXT NOT NULL,"
        " aggregate_type TEXT NOT NULL, aggregate_id TEXT NOT NULL, aggregate_version INTEGER NOT NULL,"
        " booking_id TEXT, actor_id TEXT, actor_role TEXT, occurred_at TEXT NOT NULL, summary TEXT NOT NULL,"
        " UNIQUE (source, notification_id))",
        "CREATE INDEX IF NOT EXISTS audit_entries_booking ON audit_entries (booking_id, id)",
        "CREATE INDEX IF NOT EXISTS audit_entries_actor ON audit_entries (actor_id, id)",
        "CREATE INDEX IF NOT EXISTS audit_entries_event_type ON audit_entries (event_type, id)",
        "CREATE INDEX IF NOT EXISTS audit_entries_occurred_at ON audit_entries (occurred_at, id)",
        "CREATE TABLE IF NOT EXISTS audit_certificates (certificate_id TEXT PRIMARY KEY, booking_id TEXT NOT NULL)",
    )
    table_names = ("audit_entries", "audit_certificates")

    # --- writes (by the projection) ----------------------------------------------------------

    def record_batch(self, tracking: Tracking, entries: Sequence[AuditEntry], certificates: Mapping[str, str]) -> None:
        """Appends `entries` and remembers `certificates` (certificate id → booking id), with the
        position `tracking`, in one transaction. A download's booking is its certificate's, as
        remembered by then (in this batch or before)."""
        with self.batch(tracking, bulk=len(entries) >= BULK_ROWS) as cursor:
            self.insert_rows(
                cursor,
                "audit_certificates",
                [{"certificate_id": c, "booking_id": b} for c, b in certificates.items()],
                on_conflict="ON CONFLICT (certificate_id) DO NOTHING",
            )
            downloads = [entry for entry in entries if entry["event_type"] == DOWNLOADED]
            downloaded = {entry["aggregate_id"] for entry in downloads}  # the access log's id is its certificate's
            bookings = {
                row["certificate_id"]: row["booking_id"]
                for row in self.fetch_where_in(
                    cursor, "SELECT certificate_id, booking_id FROM audit_certificates", "certificate_id", downloaded
                )
            }
            if entries and self.dialect == "postgres":
                # Two runners append here: ids must commit in id order, or a reader paging by id
                # could pass an id whose row commits later. Plain reads do not wait for this lock.
                cursor.execute("LOCK TABLE audit_entries IN EXCLUSIVE MODE")
            for entry in downloads:
                entry["booking_id"] = bookings.get(entry["aggregate_id"])
            self.insert_rows(cursor, "audit_entries", entries)

    # --- queries -------------------------------------------------------------------------------

    def page(
        self, audit_filter: AuditFilter, *, after_id: int = 0, limit: int, upto_id: int | None = None
    ) -> list[dict[str, Any]]:
        """Entries in id order after `after_id` (keyset: stable while entries are appended)."""
        clauses, params = audit_filter.where()
        clauses.append("id > :after_id")
        if upto_id is not None:
            clauses.append("id <= :upto_id")
        return self.fetch_all(
            f"SELECT {', '.join(ENTRY_COLUMNS)} FROM audit_entries"
            f" WHERE {' AND '.join(clauses)} ORDER BY id LIMIT :limit",
            params | {"after_id": after_id, "upto_id": upto_id, "limit": limit},
        )

    def last_id(self) -> int:
        row = self.fetch_one("SELECT MAX(id) AS last_id FROM audit_entries")
        return int(row["last_id"] or 0) if row else 0

    def cursor_after(self, entry: dict[str, Any]) -> str:
        return encode_cursor(str(entry["id"]), entry["source"], str(entry["notification_id"]))

    def resolve_cursor(self, cursor: str) -> int:
        """The id a cursor continues after; refuses cursors this trail did not give out."""
        entry_id, source, notification_id = decode_cursor(cursor, 3)
        if not (entry_id.isdigit() and notification_id.isdigit()):
            raise Invalid("The cursor is not one this service gave out.", code="invalid_cursor")
        found = self.fetch_one(
            "SELECT id FROM audit_entries WHERE id = :id AND source = :source AND notification_id = :notification_id",
            {"id": int(entry_id), "source": source, "notification_id": int(notification_id)},
        )
        if found is None:
            raise Invalid(
                "The cursor is not one this service gave out, or the audit trail was rebuilt since: "
                "start again from the first page.",
                code="invalid_cursor",
            )
        return int(entry_id)

    def stream(self, audit_filter: AuditFilter, *, chunk: int = 500) -> Iterator[dict[str, Any]]:
        """Every matching entry that exists now, read `chunk` rows at a time."""
        upto_id = self.last_id()
        after_id = 0
        while True:
            rows = self.page(audit_filter, after_id=after_id, limit=chunk, upto_id=upto_id)
            yield from rows
            if len(rows) < chunk:
                return
            after_id = rows[-1]["id"]


class AuditProjection(BatchProjection[AuditTrail]):
    """Each batch: its entries appended in one statement, with the batch's position."""

    name = "audit"

    def process_batch(self, events: EventBatch) -> None:
        """Every event is an entry (one not in SUMMARIES too, without details), except the opening
        of a certificate's access log: bookkeeping, not an action (the download that opened it is)."""
        entries = []
        certificates: dict[str, str] = {}
        for event, tracking in events:
            if isinstance(event, CertificateAccessLog.AccessLogOpened):
                certificates.setdefault(str(event.originator_id), str(event.booking_id))
            else:
                entries.append(audit_entry(event, tracking))
        self.view.record_batch(events[-1][1], entries, certificates)

    def process_event(self, domain_event: DomainEventProtocol[UUID], tracking: Tracking) -> None:
        """One event: a batch of one."""
        self.process_batch([(domain_event, tracking)])


AUDIT_BOOKING = ProjectionSpec(AuditProjection, AuditTrail, BookingApplication)
AUDIT_CERTIFICATE = ProjectionSpec(AuditProjection, AuditTrail, CertificateApplication)
AUDIT_PROJECTIONS = [AUDIT_BOOKING, AUDIT_CERTIFICATE]


# --- the booking at a moment in time -----------------------------------------------------------


@dataclass(frozen=True)
class BookingAsOf:
    booking: Booking
    as_of: datetime
    events: list[Any]
    """The events applied, oldest first."""


def booking_as_of(app: BookingApplication, booking_id: UUID, as_of: datetime) -> BookingAsOf:
    """The booking rebuilt from its events up to and including `as_of` (an aware datetime)."""
    events = list(app.events.get(booking_id))
    if not events or not isinstance(events[0], Booking.BookingRequested):
        raise NotFound("No such booking.")
    applied = list(takewhile(lambda event: event.timestamp <= as_of, events))
    if not applied:
        raise NotFound(
            f"The booking did not exist yet at {iso(as_of)}; it was requested at {iso(events[0].timestamp)}.",
            code="booking_not_yet_requested",
        )
    booking = app.repository.get(booking_id, version=applied[-1].originator_version)
    return BookingAsOf(booking=booking, as_of=as_of, events=applied)
