"""HTTP API of the audit trail and of booking history (staff only)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import AwareDatetime, BaseModel
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from services.booking.api import App, BookingOut
from services.booking.audit import AUDITED_EVENT_TYPES, ENTRY_COLUMNS, AuditFilter, AuditTrail, booking_as_of
from services.booking.projections import iso
from shared.auth import Principal
from shared.errors import Forbidden, Invalid
from shared.http import CurrentPrincipal

CSV_MEDIA_TYPE = "text/csv"
CSV_COLUMNS = ("event_id", *(column for column in ENTRY_COLUMNS if column != "id"))
# Spreadsheets run cells starting with these as formulas (actor ids and reasons are user input).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class AuditEntryOut(BaseModel):
    event_id: str
    source: str
    notification_id: int
    event_type: str
    aggregate_type: str
    aggregate_id: str
    aggregate_version: int
    booking_id: str | None
    actor_id: str | None
    actor_role: str | None
    occurred_at: datetime
    summary: dict[str, Any]

    @classmethod
    def of_row(cls, row: dict[str, Any]) -> AuditEntryOut:
        return cls(**{**row, "event_id": event_id(row), "summary": json.loads(row["summary"])})


class AuditPage(BaseModel):
    items: list[AuditEntryOut]
    next_cursor: str | None


class AppliedEvent(BaseModel):
    event_type: str
    version: int
    occurred_at: datetime
    actor_id: str | None
    actor_role: str | None


class BookingHistoryOut(BookingOut):
    as_of: datetime
    events: list[AppliedEvent]


def event_id(row: dict[str, Any]) -> str:
    """Stable across rebuilds (unlike the row id): the upstream and its notification id."""
    return f"{row['source']}:{row['notification_id']}"


def require_staff(principal: CurrentPrincipal) -> Principal:
    if not principal.is_staff:
        raise Forbidden("Only staff may read the audit trail and booking history.", code="staff_only")
    return principal


def get_audit_trail(request: Request) -> AuditTrail:
    return request.app.state.audit_trail  # type: ignore[no-any-return]


Staff = Annotated[Principal, Depends(require_staff)]
Trail = Annotated[AuditTrail, Depends(get_audit_trail)]

router = APIRouter(tags=["audit"])


@router.get(
    "/v1/audit",
    response_model=AuditPage,
    summary="The audit trail (staff)",
    description=(
        "Every recorded event, oldest first, with who acted and when. `since` is inclusive, `until` "
        "exclusive; timestamps need a timezone. Page with `next_cursor`. With `Accept: text/csv` the "
        "whole filtered trail is streamed as CSV (`cursor` and `limit` then do not apply)."
    ),
    responses={200: {"content": {CSV_MEDIA_TYPE: {}}}, 403: {"description": "not staff"}},
)
def audit_trail(
    _staff: Staff,
    trail: Trail,
    response: Response,
    booking_id: UUID | None = None,
    actor_id: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    event_type: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    accept: Annotated[str | None, Header(max_length=1000)] = None,
) -> Any:
    audit_filter = AuditFilter(
        booking_id=str(booking_id) if booking_id else None,
        actor_id=actor_id,
        event_type=known_event_type(event_type),
        **time_range(since, until),
    )
    after_id = trail.resolve_cursor(cursor) if cursor else 0
    if wants_csv(accept):
        return StreamingResponse(
            csv_lines(trail, audit_filter),
            media_type=f"{CSV_MEDIA_TYPE}; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="audit.csv"', "Vary": "Accept"},
        )
    response.headers["Vary"] = "Accept"
    rows = trail.page(audit_filter, after_id=after_id, limit=limit + 1)
    next_cursor = trail.cursor_after(rows[limit - 1]) if len(rows) > limit else None
    return AuditPage(items=[AuditEntryOut.of_row(row) for row in rows[:limit]], next_cursor=next_cursor)


@router.get(
    "/v1/bookings/{booking_id}/history",
    response_model=BookingHistoryOut,
    summary="A booking as it was at a moment (staff)",
    description="Rebuilt from the booking's events up to and including `as_of` (default: now).",
    responses={403: {"description": "not staff"}, 404: {"description": "no such booking, or not yet requested then"}},
)
def booking_history(booking_id: UUID, _staff: Staff, app: App, as_of: AwareDatetime | None = None) -> BookingHistoryOut:
    moment = utc(as_of, "as_of") if as_of else datetime.now(UTC)
    history = booking_as_of(app, booking_id, moment)
    return BookingHistoryOut(
        **BookingOut.of(history.booking).model_dump(),
        as_of=history.as_of,
        events=[
            AppliedEvent(
                event_type=type(event).__name__,
                version=event.originator_version,
                occurred_at=event.timestamp,
                actor_id=getattr(event, "actor_id", None),
                actor_role=getattr(event, "actor_role", None),
            )
            for event in history.events
        ],
    )


def known_event_type(event_type: str | None) -> str | None:
    if event_type is not None and event_type not in AUDITED_EVENT_TYPES:
        raise Invalid(
            f"Unknown event_type '{event_type}'; use one of {', '.join(sorted(AUDITED_EVENT_TYPES))}.",
            code="unknown_event_type",
        )
    return event_type


def utc(moment: datetime, name: str) -> datetime:
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise Invalid(f"{name} is outside the range of dates this service handles.", code="invalid_timestamp") from None


def time_range(since: datetime | None, until: datetime | None) -> dict[str, str | None]:
    start = utc(since, "since") if since else None
    end = utc(until, "until") if until else None
    if start and end and end < start:
        raise Invalid("until is before since: swap them or widen the range.", code="invalid_time_range")
    return {"since": iso(start) if start else None, "until": iso(end) if end else None}


def wants_csv(accept: str | None) -> bool:
    best = parse_accept_header(accept or "", MIMEAccept).best_match(["application/json", CSV_MEDIA_TYPE])
    return best == CSV_MEDIA_TYPE


def csv_lines(trail: AuditTrail, audit_filter: AuditFilter) -> Iterator[str]:
    """The header, then rows as they are read: the export is never held in memory whole."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for count, row in enumerate(trail.stream(audit_filter), start=1):
        writer.writerow([spreadsheet_safe(value) for value in csv_row(row)])
        if count % 200 == 0:
            yield _drain(buffer)
    yield _drain(buffer)


def csv_row(row: dict[str, Any]) -> list[Any]:
    values = {**row, "event_id": event_id(row)}
    return [values[column] if values[column] is not None else "" for column in CSV_COLUMNS]


def spreadsheet_safe(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def _drain(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text
