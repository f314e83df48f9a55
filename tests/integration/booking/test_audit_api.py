"""The audit trail and booking history over HTTP, on both stores: a booking's whole story told by
the audit API alone (certificate uploads through the internal route, a download recorded by the
certificate application on the same stores), filters, paging while events keep coming, the CSV
export, refused input, and the booking as it was at several moments."""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest

from services.booking.application import BookingApplication
from services.booking.audit import AuditTrail
from services.booking.domain import Actor, Booking, Status
from services.certificate.application import CertificateApplication
from shared.auth import Principal, Role
from shared.eventstore import eventsourcing_env
from shared.feed import SMALL_POOL, wait_for_position
from tests.fixtures.booking import participant
from tests.fixtures.booking_flows import BookingFlows

PROJECTION_TIMEOUT_S = 30
CSV_HEADER = [
    "event_id", "source", "notification_id", "event_type", "aggregate_type", "aggregate_id", "aggregate_version",
    "booking_id", "actor_id", "actor_role", "occurred_at", "summary",
]  # fmt: skip
REVIEW_TEXT = "Lärorikt, men lokalen var kall"


@pytest.fixture
def certificates(bookings: BookingFlows) -> Iterator[CertificateApplication]:
    """The certificate service's application on the same stores as the booking service (which made
    its tables at start-up: creating them again while its runner does fails on PostgreSQL)."""
    settings = bookings.client.app.state.settings  # type: ignore[attr-defined]
    env = eventsourcing_env(settings, CertificateApplication.name) | SMALL_POOL | {"CREATE_TABLE": "n"}
    app = CertificateApplication(env=env)
    yield app
    app.close()


def trail(bookings: BookingFlows) -> AuditTrail:
    return bookings.client.app.state.audit_trail  # type: ignore[attr-defined,no-any-return]


def caught_up(bookings: BookingFlows, certificates: CertificateApplication | None = None) -> None:
    """Waits until the audit trail holds every event written so far."""
    upstreams = [(BookingApplication.name, bookings.last_position())]
    if certificates is not None:
        upstreams.append((CertificateApplication.name, certificates.recorder.max_notification_id() or 0))
    for upstream, position in upstreams:
        assert wait_for_position(trail(bookings), upstream, position, PROJECTION_TIMEOUT_S), f"audit behind {upstream}"


def audit(bookings: BookingFlows, **params: Any) -> httpx.Response:
    return bookings.client.get("/v1/audit", params=params, headers=bookings.tokens("staff", "auditor"))


def entries(bookings: BookingFlows, **params: Any) -> list[dict[str, Any]]:
    """Every entry matching `params`, following next_cursor."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = audit(bookings, **params, **({"cursor": cursor} if cursor else {}))
        assert page.status_code == 200, page.text
        found += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return found


def ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json()  # type: ignore[no-any-return]


def certificate_body(certificate_id: str, sha256: str) -> dict[str, Any]:
    return {
        "certificate_id": certificate_id,
        "sha256": sha256,
        "size": 4096,
        "page_count": 2,
        "file_name": "anna-svensson-intyg.pdf",
        "contains_results": True,
        "uploaded_by": {"id": "prov-user", "role": "provider"},
    }


@dataclass
class Story:
    booking_id: str
    first_certificate: str
    second_certificate: str


def tell_story(bookings: BookingFlows, certificates: CertificateApplication) -> Story:
    """Request, accept, statuses, consent, upload, a download, review, revocation, a second upload,
    then a status change away from completed that revokes it. Waits for the audit trail after
    each step so that its id order is the order things happened."""
    client, provider, anna = bookings.client, bookings.provider, bookings.participant_token("anna")
    service = bookings.tokens("service", "service:certificate")
    first, second = str(uuid4()), str(uuid4())

    booking_id = bookings.requested("anna")
    ok(bookings.accept(booking_id))
    ok(bookings.set_status(booking_id, "started"))
    ok(bookings.set_status(booking_id, "completed"))
    ok(client.post(f"/v1/bookings/{booking_id}/consent", json={"given": True}, headers=anna))
    record = f"/internal/v1/bookings/{booking_id}/certificates"
    ok(client.post(record, json=certificate_body(first, "a1" * 32), headers=service), 201)
    caught_up(bookings)
    employer = Principal(sub="boss-1", role=Role.EMPLOYER, employer_id="acme")
    certificates.record_download(employer, UUID(first), UUID(booking_id))
    caught_up(bookings, certificates)
    ok(client.post(f"/v1/bookings/{booking_id}/review", json={"rating": 4, "text": REVIEW_TEXT}, headers=anna))
    revoke = client.post(
        f"/internal/v1/bookings/{booking_id}/certificates/{first}/revoke",
        json={"reason": "Wrong course date on the certificate"},
        headers=provider,
    )
    ok(revoke)
    ok(client.post(record, json=certificate_body(second, "b2" * 32), headers=service), 201)
    ok(bookings.set_status(booking_id, "failed"))
    caught_up(bookings, certificates)
    return Story(booking_id, first, second)


# --- the story -----------------------------------------------------------------------------------


def test_the_whole_story_of_a_booking_from_the_audit_trail_alone(
    bookings: BookingFlows, certificates: CertificateApplication
) -> None:
    story = tell_story(bookings, certificates)
    bookings.requested("bert")  # another booking: not part of this story
    caught_up(bookings, certificates)

    response = audit(bookings, booking_id=story.booking_id)
    told = ok(response)["items"]
    assert [entry["occurred_at"] for entry in told] == sorted(entry["occurred_at"] for entry in told)
    steps = [(e["event_type"], e["actor_id"], e["actor_role"], e["summary"]) for e in told]
    assert steps == [
        ("BookingRequested", "anna", "participant", {
            "product_id": bookings.catalog.product_id, "provider_id": bookings.catalog.provider_id,
            "participant_id": "anna", "employer_id": None,
        }),
        ("Accepted", "prov-user", "provider", {}),
        ("StatusChanged", "prov-user", "provider", {"old_status": "enrolled", "new_status": "started"}),
        ("StatusChanged", "prov-user", "provider", {"old_status": "started", "new_status": "completed"}),
        ("ResultsConsentGiven", "anna", "participant", {}),
        ("CertificateUploaded", "prov-user", "provider", {
            "certificate_id": story.first_certificate, "sha256": "a1" * 32, "size": 4096, "page_count": 2,
            "contains_results": True, "certification_name": "Certifierad projektledare", "supersedes": None,
        }),
        ("CertificateDownloaded", "boss-1", "employer", {"certificate_id": story.first_certificate}),
        ("ReviewSubmitted", "anna", "participant", {"rating": 4}),
        ("CertificateRevoked", "prov-user", "provider", {
            "certificate_id": story.first_certificate, "reason": "Wrong course date on the certificate",
        }),
        ("CertificateUploaded", "prov-user", "provider", {
            "certificate_id": story.second_certificate, "sha256": "b2" * 32, "size": 4096, "page_count": 2,
            "contains_results": True, "certification_name": "Certifierad projektledare", "supersedes": None,
        }),
        ("StatusChanged", "prov-user", "provider", {"old_status": "completed", "new_status": "failed"}),
        ("CertificateRevoked", "prov-user", "provider", {
            "certificate_id": story.second_certificate,
            "reason": "participation status changed from completed to failed",
        }),
    ]  # fmt: skip

    download = told[6]
    assert (download["source"], download["aggregate_type"], download["aggregate_id"]) == (
        "certificate",
        "CertificateAccessLog",
        story.first_certificate,
    )
    assert all(entry["booking_id"] == story.booking_id for entry in told)
    booking_entries = [entry for entry in told if entry["source"] == "booking"]
    assert [entry["aggregate_version"] for entry in booking_entries] == list(range(1, 12))
    assert all(entry["event_id"] == f"{entry['source']}:{entry['notification_id']}" for entry in told)
    # Personal data stays out of the trail: no name, email, review text or file name.
    for private in ("Anna Svensson", "anna@example.se", REVIEW_TEXT, "anna-svensson-intyg.pdf"):
        assert private not in response.text


def test_booking_history_as_it_was_at_several_moments(
    bookings: BookingFlows, certificates: CertificateApplication
) -> None:
    story = tell_story(bookings, certificates)
    staff = bookings.tokens("staff")
    told = [entry for entry in entries(bookings, booking_id=story.booking_id) if entry["source"] == "booking"]

    def history(**params: Any) -> httpx.Response:
        return bookings.client.get(f"/v1/bookings/{story.booking_id}/history", params=params, headers=staff)

    expected = {  # after the n-th booking event: (state, status, active certificate, consent, review)
        1: ("requested", "unknown", None, False, None),
        2: ("accepted", "enrolled", None, False, None),
        4: ("accepted", "completed", None, False, None),
        6: ("accepted", "completed", story.first_certificate, True, None),
        7: ("accepted", "completed", story.first_certificate, True, {"rating": 4, "text": REVIEW_TEXT}),
        8: ("accepted", "completed", None, True, {"rating": 4, "text": REVIEW_TEXT}),
        9: ("accepted", "completed", story.second_certificate, True, {"rating": 4, "text": REVIEW_TEXT}),
        11: ("accepted", "failed", None, True, {"rating": 4, "text": REVIEW_TEXT}),
    }
    for version, (state, status, certificate, consent, review) in expected.items():
        moment = told[version - 1]["occurred_at"]
        then = ok(history(as_of=moment))
        assert (then["version"], then["state"], then["status"]) == (version, state, status), moment
        assert (then["certificate"] or {}).get("certificate_id") == certificate
        assert (then["results_consent"], then["review"]) == (consent, review)
        assert [event["version"] for event in then["events"]] == list(range(1, version + 1))
        assert [event["event_type"] for event in then["events"]] == [e["event_type"] for e in told[:version]]
        assert then["events"][-1]["actor_id"] == told[version - 1]["actor_id"]
        assert datetime.fromisoformat(then["as_of"]) == datetime.fromisoformat(moment)
        assert then["participant"]["email"] == "anna@example.se"  # staff see the booking whole

    now = ok(history())
    assert (now["version"], now["status"]) == (11, "failed")
    just_before = datetime.fromisoformat(told[0]["occurred_at"]) - timedelta(microseconds=1)
    too_early = history(as_of=just_before.isoformat())
    assert (too_early.status_code, too_early.json()["error"]["code"]) == (404, "booking_not_yet_requested")
    assert "requested at" in too_early.json()["error"]["message"]

    for as_of in ("yesterday", "2025-13-01T00:00:00Z", "2025-01-01T10:00:00", "0001-01-01T00:00:00+01:00"):
        refused = history(as_of=as_of)
        assert refused.status_code == 422, (as_of, refused.text)
        assert refused.json()["error"]["code"] in {"validation_error", "invalid_timestamp"}
    unknown = bookings.client.get(f"/v1/bookings/{uuid4()}/history", headers=staff)
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "not_found")
    not_a_booking = bookings.client.get(f"/v1/bookings/{bookings.catalog.product_id}/history", headers=staff)
    assert not_a_booking.status_code == 404
    others = (("participant", {}), ("provider", {"provider_id": bookings.catalog.provider_id}), ("service", {}))
    for role, claims in others:
        denied = bookings.client.get(
            f"/v1/bookings/{story.booking_id}/history", headers=bookings.tokens(role, f"{role}-x", **claims)
        )
        assert (denied.status_code, denied.json()["error"]["code"]) == (403, "staff_only")
    assert bookings.client.get(f"/v1/bookings/{story.booking_id}/history").status_code == 401


# --- filters, paging, CSV ------------------------------------------------------------------------


def test_filters_select_by_booking_actor_type_and_time(
    bookings: BookingFlows, certificates: CertificateApplication
) -> None:
    story = tell_story(bookings, certificates)
    other = bookings.accepted("bert")
    caught_up(bookings, certificates)
    everything = entries(bookings, limit=500)

    status_changes = entries(bookings, event_type="StatusChanged")
    assert status_changes == [entry for entry in everything if entry["event_type"] == "StatusChanged"]
    assert len(status_changes) == 3
    by_anna = entries(bookings, actor_id="anna")
    assert [entry["event_type"] for entry in by_anna] == ["BookingRequested", "ResultsConsentGiven", "ReviewSubmitted"]
    of_other = entries(bookings, booking_id=other)
    assert [entry["event_type"] for entry in of_other] == ["BookingRequested", "Accepted"]
    downloads = entries(bookings, event_type="CertificateDownloaded", booking_id=story.booking_id)
    assert [(entry["actor_id"], entry["booking_id"]) for entry in downloads] == [("boss-1", story.booking_id)]

    middle = everything[len(everything) // 2]["occurred_at"]
    since = entries(bookings, since=middle)  # inclusive
    until = entries(bookings, until=middle)  # exclusive
    assert since == [entry for entry in everything if entry["occurred_at"] >= middle]
    assert until == [entry for entry in everything if entry["occurred_at"] < middle]
    assert since and until and since[0]["occurred_at"] == middle
    assert entries(bookings, since=middle, until=middle) == []
    in_stockholm = datetime.fromisoformat(middle).astimezone(timezone(timedelta(hours=2)))
    assert entries(bookings, since=in_stockholm.isoformat()) == since
    assert entries(bookings, booking_id=story.booking_id, actor_id="anna", event_type="ReviewSubmitted", since=middle)[
        0
    ]["summary"] == {"rating": 4}


def test_pages_stay_stable_while_new_events_are_written(bookings: BookingFlows) -> None:
    for pid in ("p1", "p2", "p3", "p4"):
        bookings.accepted(pid)
    caught_up(bookings)
    before = entries(bookings, limit=500)
    assert len(before) >= 11

    seen: list[dict[str, Any]] = []
    cursor = None
    written = 0
    while True:
        page = ok(audit(bookings, limit=3, **({"cursor": cursor} if cursor else {})))
        assert len(page["items"]) <= 3
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        if written < 4:  # between pages: new events before and after the cursor's position
            bookings.accepted(f"late{written}")
            written += 1
            caught_up(bookings)

    ids = [entry["event_id"] for entry in seen]
    assert len(ids) == len(set(ids)), "an entry was served twice"
    assert [entry["event_id"] for entry in seen[: len(before)]] == [entry["event_id"] for entry in before]
    late = [entry for entry in seen[len(before) :] if entry["event_type"] == "BookingRequested"]
    assert [entry["summary"]["participant_id"] for entry in late] == [f"late{i}" for i in range(4)]
    assert seen == entries(bookings, limit=500)


def test_csv_export_streams_every_matching_entry_with_a_header(
    bookings: BookingFlows, certificates: CertificateApplication
) -> None:
    story = tell_story(bookings, certificates)
    many_events(bookings.app, bookings.catalog.product_id, bookings=130)  # > one 500-row chunk of the stream
    caught_up(bookings, certificates)
    staff_csv = {**bookings.tokens("staff"), "Accept": "text/csv"}

    export = bookings.client.get("/v1/audit", headers=staff_csv, params={"limit": 5})
    assert export.status_code == 200, export.text
    assert export.headers["content-type"].startswith("text/csv")
    assert "attachment" in export.headers["content-disposition"]
    reader = csv.reader(io.StringIO(export.text))
    assert next(reader) == CSV_HEADER
    rows = [dict(zip(CSV_HEADER, row, strict=True)) for row in reader]
    as_json = entries(bookings, limit=500)
    assert len(rows) == len(as_json) > 500
    assert [row["event_id"] for row in rows] == [entry["event_id"] for entry in as_json]
    assert [json.loads(row["summary"]) for row in rows] == [entry["summary"] for entry in as_json]

    one_booking = bookings.client.get("/v1/audit", headers=staff_csv, params={"booking_id": story.booking_id})
    story_rows = list(csv.DictReader(io.StringIO(one_booking.text)))
    assert len(story_rows) == 12
    download = next(row for row in story_rows if row["event_type"] == "CertificateDownloaded")
    assert (download["actor_id"], download["actor_role"]) == ("boss-1", "employer")
    assert download["booking_id"] == story.booking_id
    reasons = [json.loads(row["summary"])["reason"] for row in story_rows if row["event_type"] == "CertificateRevoked"]
    assert reasons == ["Wrong course date on the certificate", "participation status changed from completed to failed"]
    empty = bookings.client.get("/v1/audit", headers=staff_csv, params={"booking_id": str(uuid4())})
    assert empty.text.splitlines() == [",".join(CSV_HEADER)]


def many_events(app: BookingApplication, product_id: str, bookings: int) -> None:
    """Bookings written straight to the event store in one transaction: four events each."""
    product = app.get_product(UUID(product_id))
    staff = Actor("staff-bulk", "staff")
    batch = []
    for number in range(bookings):
        booking = Booking(
            id=uuid4(), product_id=product.id, provider_id=product.provider_id,
            participant=participant(f"bulk{number}"), employer_id=None, actor_id=staff.id, actor_role=staff.role,
        )  # fmt: skip
        booking.accept(staff)
        booking.change_status(Status.STARTED, staff)
        booking.change_status(Status.COMPLETED, staff)
        batch.append(booking)
    app.save(*batch)


# --- refused input -------------------------------------------------------------------------------


def forged_cursor(*parts: str) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode().rstrip("=")


def test_bad_input_and_other_roles_are_refused_with_stable_codes(bookings: BookingFlows) -> None:
    bookings.accepted("anna")
    caught_up(bookings)
    first = ok(audit(bookings, limit=1))
    real_cursor = first["next_cursor"]
    assert real_cursor and ok(audit(bookings, cursor=real_cursor))["items"]

    cases: list[tuple[dict[str, Any], str]] = [
        ({"booking_id": "not-a-uuid"}, "validation_error"),
        ({"event_type": "StatusChange"}, "unknown_event_type"),
        ({"event_type": "x" * 65}, "validation_error"),
        ({"actor_id": ""}, "validation_error"),
        ({"since": "yesterday"}, "validation_error"),
        ({"since": "2025-01-01T10:00:00"}, "validation_error"),  # no timezone
        ({"since": "0001-01-01T00:00:00+01:00"}, "invalid_timestamp"),
        ({"since": "2025-02-01T00:00:00Z", "until": "2025-01-01T00:00:00Z"}, "invalid_time_range"),
        ({"limit": 100000}, "validation_error"),
        ({"limit": 0}, "validation_error"),
        ({"limit": "ten"}, "validation_error"),
        ({"cursor": "not a cursor"}, "invalid_cursor"),
        ({"cursor": forged_cursor("999999", "booking", "999999")}, "invalid_cursor"),
        ({"cursor": forged_cursor("1", "booking")}, "invalid_cursor"),
        ({"cursor": forged_cursor("1", "certificate", "1")}, "invalid_cursor"),
        ({"cursor": forged_cursor("1; DROP TABLE audit_entries", "booking", "1")}, "invalid_cursor"),
        ({"cursor": "x" * 501}, "validation_error"),
    ]
    for params, code in cases:
        refused = audit(bookings, **params)
        assert (refused.status_code, refused.json()["error"]["code"]) == (422, code), (params, refused.text)
        assert refused.json()["error"]["message"]

    for role, claims in (
        ("participant", {}),
        ("provider", {"provider_id": bookings.catalog.provider_id}),
        ("employer", {"employer_id": "acme"}),
        ("service", {}),
    ):
        denied = bookings.client.get("/v1/audit", headers=bookings.tokens(role, f"{role}-x", **claims))
        assert (denied.status_code, denied.json()["error"]["code"]) == (403, "staff_only")
    anonymous = bookings.client.get("/v1/audit", params={"limit": 100000})
    assert anonymous.status_code == 401
    assert ok(audit(bookings, limit=500))["items"] == entries(bookings), "refused requests changed nothing"


def test_projection_lag_is_exported_for_every_upstream(bookings: BookingFlows) -> None:
    bookings.accepted("anna")
    caught_up(bookings)
    metrics = bookings.client.get("/metrics")
    assert metrics.status_code == 200
    lag = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in metrics.text.splitlines()
        if line.startswith("projection_lag_events{")
    }
    assert set(lag) == {
        'projection_lag_events{projection="booking_summaries",upstream="booking"}',
        'projection_lag_events{projection="audit",upstream="booking"}',
        'projection_lag_events{projection="audit",upstream="certificate"}',
    }
    assert lag['projection_lag_events{projection="audit",upstream="booking"}'] == 0
