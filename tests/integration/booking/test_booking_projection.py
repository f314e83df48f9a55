"""The booking summaries read model: equal to a rebuild from the event store, equal to the
aggregates, and fed by events that another process writes."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from services.booking.api import BookingOut
from services.booking.projections import BOOKING_SUMMARIES, BookingSummaries
from services.booking.settings import BookingSettings
from shared.feed import SupervisedProjection, wait_for_position
from tests.fixtures.booking_flows import BookingFlows

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def booking_settings(service_env: dict[str, Any]) -> BookingSettings:
    """The service without its own workers: these tests start and stop the projection themselves."""
    return BookingSettings(**service_env, run_workers=False)


@pytest.fixture
def summaries_projection(booking_settings: BookingSettings) -> Iterator[SupervisedProjection]:
    projection = SupervisedProjection(booking_settings, BOOKING_SUMMARIES, restart_delay_s=0.1).start()
    yield projection
    projection.stop()


def rows(view: BookingSummaries) -> list[dict[str, Any]]:
    return view.fetch_all("SELECT * FROM booking_summaries ORDER BY booking_id")


def record_certificate(bookings: BookingFlows, booking_id: str, *, contains_results: bool = False) -> str:
    certificate_id = str(uuid4())
    response = bookings.client.post(
        f"/internal/v1/bookings/{booking_id}/certificates",
        json={
            "certificate_id": certificate_id,
            "sha256": uuid4().hex * 2,
            "size": 4096,
            "page_count": 2,
            "file_name": "intyg.pdf",
            "contains_results": contains_results,
            "uploaded_by": {"id": "prov-user", "role": "provider"},
        },
        headers=bookings.tokens("service", "service:certificate"),
    )
    assert response.status_code == 201, response.text
    return certificate_id


def scripted_history(bookings: BookingFlows) -> list[str]:
    """Every kind of booking event, on six bookings; returns their ids."""
    client, provider = bookings.client, bookings.provider

    def ok(response: Any) -> None:
        assert response.status_code in (200, 201), response.text

    anna = bookings.completed("anna")
    anna_token = bookings.participant_token("anna")
    ok(client.post(f"/v1/bookings/{anna}/consent", json={"given": True}, headers=anna_token))
    record_certificate(bookings, anna, contains_results=True)
    ok(client.post(f"/v1/bookings/{anna}/review", json={"rating": 5, "text": "Lärorikt"}, headers=anna_token))
    ok(client.post(f"/v1/bookings/{anna}/consent", json={"given": False}, headers=anna_token))  # revokes

    bert = bookings.requested("bert")
    ok(client.post(f"/v1/bookings/{bert}/decline", json={"reason": "fullbokat"}, headers=provider))

    carl = bookings.accepted("carl")
    ok(bookings.set_status(carl, "started"))
    ok(client.post(f"/v1/bookings/{carl}/cancel", json={"reason": "sjuk"}, headers=bookings.participant_token("carl")))

    dora = bookings.completed("dora")
    record_certificate(bookings, dora)
    record_certificate(bookings, dora)  # supersedes the first
    ok(bookings.set_status(dora, "failed"))  # revokes the second
    ok(bookings.set_status(dora, "completed"))

    product = client.post(
        "/v1/products", json={"provider_id": bookings.catalog.provider_id, "title": "Excel"}, headers=provider
    )
    ok(product)
    eva = bookings.requested("eva", employer_id="acme", product_id=product.json()["product_id"])

    fred = bookings.completed("fred")
    certificate = record_certificate(bookings, fred)
    ok(
        client.put(
            f"/internal/v1/bookings/{fred}/certificates/{certificate}/visibility",
            json={"public": True},
            headers=bookings.participant_token("fred"),
        )
    )
    return [anna, bert, carl, dora, eva, fred]


def test_the_read_model_equals_a_rebuild_and_the_aggregates(
    bookings: BookingFlows, booking_settings: BookingSettings, summaries_projection: SupervisedProjection
) -> None:
    booking_ids = scripted_history(bookings)
    bookings.caught_up()
    view: BookingSummaries = bookings.client.app.state.booking_summaries  # type: ignore[attr-defined]
    before = rows(view)
    assert sorted(row["booking_id"] for row in before) == sorted(booking_ids)

    # Every row says what the aggregate, rebuilt from its events by the repository, says.
    for row in before:
        booking = bookings.app.repository.get(UUID(row["booking_id"]))
        assert BookingOut.of_row(row).model_dump(mode="json") == BookingOut.of(booking).model_dump(mode="json")

    summaries_projection.stop()
    view.reset(("booking",))
    assert rows(view) == []
    assert not view.max_tracking_id("booking")

    rebuild = SupervisedProjection(booking_settings, BOOKING_SUMMARIES).start()
    try:
        assert wait_for_position(view, "booking", bookings.last_position(), timeout=10)
        assert rows(view) == before
    finally:
        rebuild.stop()


# Another process: its own interpreter, its own BookingApplication on the same store.
WRITER = """
import sys
from uuid import UUID
from services.booking.application import BookingApplication
from services.booking.settings import BookingSettings
from shared.auth import Principal, Role
from shared.eventstore import eventsourcing_env

data_dir, database_url, product_id = sys.argv[1:4]
settings = BookingSettings(data_dir=data_dir, database_url=database_url, auth_secret="unused-here")
app = BookingApplication(env=eventsourcing_env(settings, BookingApplication.name))
print("ready", flush=True)
for line in sys.stdin:
    result = app.request_booking(
        Principal(sub="service:import", role=Role.SERVICE),
        booking_id=None,
        product_id=UUID(product_id),
        participant={"id": line.strip(), "name": "Gustav", "email": "g@example.se", "locale": "sv"},
        employer_id=None,
    )
    print(result.position, result.aggregate.id, flush=True)
app.close()
"""


def test_events_written_by_another_process_reach_the_read_model_within_a_second(
    bookings: BookingFlows, booking_settings: BookingSettings, summaries_projection: SupervisedProjection
) -> None:
    view: BookingSummaries = bookings.client.app.state.booking_summaries  # type: ignore[attr-defined]
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            WRITER,
            str(booking_settings.data_dir),
            booking_settings.database_url,
            bookings.catalog.product_id,
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdin is not None
        assert writer.stdout.readline().strip() == "ready"
        bookings.caught_up()
        for participant_id in ("gustav", "greta"):
            writer.stdin.write(participant_id + "\n")
            writer.stdin.flush()
            position, booking_id = writer.stdout.readline().split()
            written_at = time.monotonic()
            assert wait_for_position(view, "booking", int(position), timeout=1.0), "not in the read model after 1 s"
            assert time.monotonic() - written_at < 1.0
            row = view.get(booking_id)
            assert row is not None and row["participant_id"] == participant_id
    finally:
        if writer.stdin:
            writer.stdin.close()
        writer.wait(timeout=30)
    assert writer.returncode == 0
