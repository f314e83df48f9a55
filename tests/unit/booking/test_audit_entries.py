"""Audit entries built from events (pure): every event type has a summary, personal data stays out,
and the HTTP helpers choose CSV and keep spreadsheet formulas inert."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.persistence import Tracking

from services.booking.audit import AUDITED_EVENT_TYPES, SUMMARIES, audit_entry
from services.booking.audit_api import spreadsheet_safe, wants_csv
from services.booking.domain import Actor, Booking, CertificateFile, Product, Provider, Status
from services.certificate.domain import CertificateAccessLog

ACTOR = Actor("prov-user", "provider")
ANNA = Actor("anna", "participant")


def event_classes(aggregate: type) -> set[type]:
    """The aggregate's own event types (not the library's bases)."""
    return {
        value
        for name, value in vars(aggregate).items()
        if isinstance(value, type) and issubclass(value, aggregate.Event) and name not in ("Event", "Created")
    }


def test_every_event_type_of_both_services_has_an_audit_summary() -> None:
    every = set().union(*(event_classes(a) for a in (Booking, Provider, Product, CertificateAccessLog)))
    bookkeeping = {CertificateAccessLog.AccessLogOpened}
    assert set(SUMMARIES) == every - bookkeeping
    assert "StatusChanged" in AUDITED_EVENT_TYPES and "AccessLogOpened" not in AUDITED_EVENT_TYPES


def a_booking_with_history() -> Booking:
    booking = Booking(
        id=uuid4(), product_id=uuid4(), provider_id=uuid4(),
        participant={"id": "anna", "name": "Anna Svensson", "email": "anna@example.se", "locale": "sv"},
        employer_id=None, actor_id=ANNA.id, actor_role=ANNA.role,
    )  # fmt: skip
    booking.accept(ACTOR)
    booking.change_status(Status.COMPLETED, ACTOR)
    booking.upload_certificate(
        CertificateFile(uuid4(), "ab" * 32, 10, 1, "anna-svensson.pdf", contains_results=False),
        "Certifierad projektledare",
        datetime.now(UTC),
        ACTOR,
    )
    booking.submit_review(5, "Anna tyckte om kursen", ANNA)
    return booking


def entries_of(booking: Booking) -> list[Any]:
    return [audit_entry(event, Tracking("booking", number)) for number, event in enumerate(booking.collect_events(), 1)]


def test_entries_record_who_when_and_what_without_personal_data() -> None:
    booking = a_booking_with_history()
    requested, accepted, status, uploaded, reviewed = entries_of(booking)

    assert (requested["event_type"], requested["aggregate_type"], requested["booking_id"]) == (
        "BookingRequested", "Booking", str(booking.id),
    )  # fmt: skip
    assert (requested["actor_id"], requested["actor_role"], requested["source"], requested["notification_id"]) == (
        "anna", "participant", "booking", 1,
    )  # fmt: skip
    assert (accepted["actor_id"], accepted["aggregate_version"], accepted["summary"]) == ("prov-user", 2, "{}")
    assert json.loads(status["summary"]) == {"old_status": "enrolled", "new_status": "completed"}
    assert json.loads(reviewed["summary"]) == {"rating": 5}
    uploaded_summary = json.loads(uploaded["summary"])
    assert uploaded_summary["sha256"] == "ab" * 32 and uploaded_summary["supersedes"] is None
    assert requested["summary"] == json.dumps(json.loads(requested["summary"]), separators=(",", ":"), sort_keys=True)
    assert len(requested["occurred_at"]) == len("2025-01-01T00:00:00.000000+00:00")
    assert requested["occurred_at"].endswith("+00:00")

    everything = " ".join(entry["summary"] for entry in (requested, accepted, status, uploaded, reviewed))
    for private in ("Anna Svensson", "anna@example.se", "Anna tyckte om kursen", "anna-svensson.pdf", '"sv"'):
        assert private not in everything


def test_a_download_names_the_certificate_and_takes_its_booking_from_the_access_log() -> None:
    certificate_id, booking_id = uuid4(), uuid4()
    access_log = CertificateAccessLog(id=certificate_id, booking_id=booking_id)
    access_log.record_download("boss-1", "employer")
    _opened, downloaded = access_log.collect_events()
    entry = audit_entry(downloaded, Tracking("certificate", 7))
    assert (entry["event_type"], entry["aggregate_type"], entry["source"]) == (
        "CertificateDownloaded", "CertificateAccessLog", "certificate",
    )  # fmt: skip
    assert (entry["actor_id"], entry["actor_role"]) == ("boss-1", "employer")
    assert json.loads(entry["summary"]) == {"certificate_id": str(certificate_id)}
    assert (entry["booking_id"], entry["aggregate_id"]) == (None, str(certificate_id))  # resolved by the view


@pytest.mark.parametrize(
    ("accept", "csv"),
    [
        (None, False),
        ("", False),
        ("*/*", False),
        ("application/json", False),
        ("text/csv", True),
        ("text/csv;q=0.5, application/json", False),
        ("application/json;q=0.1, text/csv", True),
        ("text/*", True),
        ("text/html,application/xhtml+xml,*/*;q=0.8", False),
    ],
)
def test_csv_is_chosen_only_when_preferred(accept: str | None, csv: bool) -> None:
    assert wants_csv(accept) is csv


@pytest.mark.parametrize(
    ("value", "safe"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+46 70", "'+46 70"),
        ("-1", "'-1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("staff-1", "staff-1"),
        ('{"reason":"=1+1"}', '{"reason":"=1+1"}'),
        (3, 3),
    ],
)
def test_spreadsheet_formulas_in_csv_cells_are_made_inert(value: Any, safe: Any) -> None:
    assert spreadsheet_safe(value) == safe
