"""Many writers on one booking at once: no lost update, every reported change is in the store.

Eight threads send 25 status changes each, through the application and through HTTP (the
TestClient runs the sync endpoints in a worker pool, so requests overlap for real).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from uuid import UUID

import pytest

from services.booking.domain import SETTABLE_STATUSES, Booking, Status
from shared.auth import Principal, Role
from shared.errors import AppError
from tests.fixtures.booking_flows import POSITION, BookingFlows

THREADS = 8
PER_THREAD = 25
BASE_VERSION = 2  # BookingRequested, Accepted
STATUSES = sorted(SETTABLE_STATUSES)


@dataclass(frozen=True)
class Outcome:
    status: Status
    """The status the writer asked for."""
    position: int | None = None
    """Where its event landed; None when nothing changed."""
    expected_version: int | None = None
    """The If-Match version it sent, if any."""
    error: str | None = None


class Writer:
    """Sends status changes to one booking, through the application or over HTTP."""

    def __init__(self, bookings: BookingFlows, booking_id: str, *, via: str, if_match: bool) -> None:
        self.bookings = bookings
        self.booking_id = booking_id
        self.via = via
        self.if_match = if_match
        self.principal = Principal(sub="prov-user", role=Role.PROVIDER, provider_id=bookings.catalog.provider_id)

    def __call__(self, status: Status) -> Outcome:
        expected = self._current_version() if self.if_match else None
        return self._via_app(status, expected) if self.via == "application" else self._via_http(status, expected)

    def _current_version(self) -> int:
        if self.via == "application":
            return self.bookings.app.repository.get(UUID(self.booking_id)).version
        # Over HTTP a client reads the (possibly stale) read model: a stale version must give 412.
        detail = self.bookings.get(self.booking_id, self.bookings.provider)
        assert detail.status_code == 200, detail.text
        return int(detail.json()["version"])

    def _via_app(self, status: Status, expected: int | None) -> Outcome:
        try:
            result = self.bookings.app.change_status(
                self.principal, UUID(self.booking_id), status, expected_version=expected
            )
        except AppError as error:
            return Outcome(status, expected_version=expected, error=error.code)
        assert result.aggregate.status is status
        return Outcome(status, result.position, expected)

    def _via_http(self, status: Status, expected: int | None) -> Outcome:
        headers = {**self.bookings.provider, **({"If-Match": f'"{expected}"'} if expected is not None else {})}
        response = self.bookings.client.post(
            f"/v1/bookings/{self.booking_id}/status", json={"status": status.value}, headers=headers
        )
        if response.status_code != 200:
            return Outcome(status, expected_version=expected, error=response.json()["error"]["code"])
        assert response.json()["status"] == status.value
        position = response.headers.get(POSITION)
        return Outcome(status, int(position) if position else None, expected)


def run_concurrently(write: Callable[[Status], Outcome]) -> list[Outcome]:
    def worker(seed: int) -> list[Outcome]:
        rng = random.Random(seed)
        return [write(rng.choice(STATUSES)) for _ in range(PER_THREAD)]

    with ThreadPoolExecutor(THREADS) as pool:
        return [outcome for batch in pool.map(worker, range(THREADS)) for outcome in batch]


def check_store_matches(bookings: BookingFlows, booking_id: str, outcomes: list[Outcome]) -> None:
    """Every reported change has exactly its event; the events form one unbroken chain."""
    app = bookings.app
    changed = [o for o in outcomes if o.position is not None]
    positions = [o.position for o in changed]
    assert len(positions) == len(set(positions)), "two writers were told about the same event"

    booking = app.repository.get(UUID(booking_id))
    assert isinstance(booking, Booking)
    assert booking.version == BASE_VERSION + len(changed), "an update was lost or an extra event written"

    for outcome in changed:
        [notification] = app.recorder.select_notifications(start=outcome.position, limit=1)
        event = app.mapper.to_domain_event(notification)
        assert notification.id == outcome.position
        assert str(event.originator_id) == booking_id
        assert type(event).__name__ == "StatusChanged"
        assert event.new_status == outcome.status.value  # type: ignore[attr-defined]
        if outcome.expected_version is not None:
            assert event.originator_version == outcome.expected_version + 1, "applied on another version"

    history = [app.mapper.to_domain_event(stored) for stored in app.recorder.select_events(UUID(booking_id))]
    status_changes = [e for e in history if type(e).__name__ == "StatusChanged"]
    assert len(status_changes) == len(changed)
    previous = Status.ENROLLED.value
    for event in status_changes:
        assert event.old_status == previous, "a change was decided on a state that was no longer current"
        assert event.new_status != event.old_status
        previous = event.new_status
    assert booking.status.value == previous


@pytest.mark.parametrize("via", ["application", "http"])
def test_concurrent_status_changes_without_if_match_lose_no_update(bookings: BookingFlows, via: str) -> None:
    booking_id = bookings.accepted("anna")

    outcomes = run_concurrently(Writer(bookings, booking_id, via=via, if_match=False))

    errors = {o.error for o in outcomes if o.error}
    assert errors <= {"concurrent_update"}, errors
    assert sum(o.error is None for o in outcomes) >= len(outcomes) * 0.9, "most writers should get through"
    assert sum(o.position is not None for o in outcomes) > THREADS, "the test needs real contention"
    check_store_matches(bookings, booking_id, outcomes)


@pytest.mark.parametrize("via", ["application", "http"])
def test_concurrent_status_changes_with_if_match_apply_once_or_refuse(bookings: BookingFlows, via: str) -> None:
    booking_id = bookings.accepted("anna")
    bookings.caught_up()

    outcomes = run_concurrently(Writer(bookings, booking_id, via=via, if_match=True))

    errors = {o.error for o in outcomes if o.error}
    assert errors <= {"version_mismatch", "concurrent_update"}, errors
    assert "version_mismatch" in errors, "with eight writers some If-Match must be stale"
    assert any(o.position is not None for o in outcomes)
    check_store_matches(bookings, booking_id, outcomes)
