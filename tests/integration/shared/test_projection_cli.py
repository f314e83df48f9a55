"""The `projections` command on both stores: migrate, list (positions and lag), rebuild from the
command line, and a rebuild while the booking service keeps serving and its runners hold the leases."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from services.booking.application import BookingApplication
from services.booking.audit import AUDIT_PROJECTIONS, AuditTrail
from services.booking.settings import BookingSettings
from shared.auth import Principal, Role
from shared.eventstore import eventsourcing_env
from shared.feed import SMALL_POOL, wait_for_position
from shared.projection_cli import main, rebuild
from shared.settings import ServiceSettings
from tests.fixtures.booking import participant
from tests.fixtures.booking_flows import BookingFlows

TIMEOUT_S = 120


@pytest.fixture
def cli_settings(service_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> ServiceSettings:
    """The command reads its settings from the environment, like in the deploy Job."""
    monkeypatch.setenv("DATA_DIR", str(service_env["data_dir"]))
    monkeypatch.setenv("DATABASE_URL", service_env["database_url"])
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    return ServiceSettings(**service_env)


@pytest.fixture
def booking_app(cli_settings: ServiceSettings) -> Iterator[BookingApplication]:
    app = BookingApplication(env=eventsourcing_env(cli_settings, BookingApplication.name) | SMALL_POOL)
    yield app
    app.close()


def listed(capsys: pytest.CaptureFixture[str]) -> dict[tuple[str, str], dict[str, int]]:
    main(["list", "--json"])
    return {(p["projection"], p["upstream"]): p for p in json.loads(capsys.readouterr().out)}


def write_events(app: BookingApplication, bookings: int) -> int:
    staff = Principal(sub="staff-1", role=Role.STAFF)
    provider = app.register_provider(
        staff, provider_id=None, name="Kurs AB", linkedin_organization_id=None, logo_url=None
    )
    product = app.register_product(staff, product_id=None, provider_id=provider.aggregate.id, title="Projektledning")
    for number in range(bookings):
        booking = app.request_booking(
            staff,
            booking_id=None,
            product_id=product.aggregate.id,
            participant=participant(f"p{number}"),
            employer_id=None,
        )
        app.accept(staff, booking.aggregate.id)
    return app.recorder.max_notification_id() or 0


def test_migrate_list_and_rebuild_from_the_command_line(
    cli_settings: ServiceSettings, booking_app: BookingApplication, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["migrate"])
    assert "booking: tables ready" in capsys.readouterr().out
    fresh = listed(capsys)
    assert {("booking_summaries", "booking"), ("audit", "booking"), ("audit", "certificate")} <= set(fresh)
    assert all(p["position"] == p["upstream_max"] == p["lag"] == 0 for p in fresh.values())

    events = write_events(booking_app, bookings=4)  # nothing runs the projections: they fall behind
    behind = listed(capsys)
    assert behind["audit", "booking"] == {
        "projection": "audit", "upstream": "booking", "position": 0, "upstream_max": events, "lag": events,
    }  # fmt: skip
    assert behind["booking_summaries", "booking"]["lag"] == events

    main(["rebuild", "audit", "--timeout", str(TIMEOUT_S)])
    output = capsys.readouterr()
    assert f"rebuild audit: {events}/{events} events (100%)" in output.err
    assert output.out.splitlines()[0].split() == ["PROJECTION", "UPSTREAM", "POSITION", "UPSTREAM_MAX", "LAG"]
    rebuilt = listed(capsys)
    assert rebuilt["audit", "booking"]["lag"] == rebuilt["audit", "certificate"]["lag"] == 0
    assert rebuilt["booking_summaries", "booking"]["lag"] == events, "only the named projection was rebuilt"

    main(["list"])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["PROJECTION", "UPSTREAM", "POSITION", "UPSTREAM_MAX", "LAG"]
    assert ["audit", "booking", str(events), str(events), "0"] in [line.split() for line in table]

    with pytest.raises(SystemExit, match="unknown projection 'audits'; known: audit, booking_summaries"):
        main(["rebuild", "audits"])


def test_a_rebuild_while_the_service_keeps_serving_replays_every_event_once(
    bookings: BookingFlows, booking_settings: BookingSettings
) -> None:
    trail: AuditTrail = bookings.client.app.state.audit_trail  # type: ignore[attr-defined]
    for number in range(5):
        bookings.accepted(f"before{number}")
    assert wait_for_position(trail, BookingApplication.name, bookings.last_position(), TIMEOUT_S)
    before = entries_by_event(trail)

    rebuilt: list[Any] = []
    rebuilding = threading.Thread(
        target=lambda: rebuilt.append(
            rebuild(booking_settings, AUDIT_PROJECTIONS, timeout_s=TIMEOUT_S, progress=io.StringIO())
        )
    )
    rebuilding.start()
    served = 0
    while rebuilding.is_alive() or served < 3:  # commands and audit queries go on meanwhile
        bookings.accepted(f"during{served}")
        page = bookings.client.get("/v1/audit", headers=bookings.tokens("staff"))
        assert page.status_code == 200, page.text
        served += 1
    rebuilding.join()
    assert rebuilt, "the rebuild did not finish"

    assert wait_for_position(trail, BookingApplication.name, bookings.last_position(), TIMEOUT_S)
    after = entries_by_event(trail)
    every_event = {n.id for n in bookings.app.recorder.select_notifications(start=1, limit=100_000)}
    assert sorted(notification_id for _, notification_id in after) == sorted(every_event)
    assert {key: after[key] for key in before} == before


def entries_by_event(trail: AuditTrail) -> dict[tuple[str, int], tuple[Any, ...]]:
    rows = trail.fetch_all(
        "SELECT source, notification_id, event_type, booking_id, actor_id, occurred_at, summary FROM audit_entries"
    )
    entries = {(row["source"], row["notification_id"]): tuple(row.values())[2:] for row in rows}
    assert len(entries) == len(rows), "an event was recorded twice"
    return entries
