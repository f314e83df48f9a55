"""Drill: about a thousand concurrent status changes on ONE booking, over HTTP, with If-Match.

16 threads × 63 requests = 1,008 on each store (the TestClient runs the sync endpoints in a
worker pool, so requests overlap for real). Each thread sends the version it last saw; after a
refusal it reads the booking again. Every answer must be 200 (applied exactly once, on the
version it named) or a refusal (412 stale If-Match, 409 concurrent update), and the booking's
final version must be the base version plus the number of applied changes. Each thread asks
for a status other than the one it saw, so every applied change is a real one (no no-ops).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from uuid import UUID

import pytest

from services.booking.domain import SETTABLE_STATUSES
from tests.fixtures.booking_flows import BookingFlows

pytestmark = pytest.mark.drill

THREADS = 16
PER_THREAD = 63
BASE_VERSION = 2  # BookingRequested, Accepted
STATUSES = sorted(SETTABLE_STATUSES)
REFUSALS = {412: "version_mismatch", 409: "concurrent_update"}


@dataclass(frozen=True)
class Answer:
    if_match: int
    target: str
    status_code: int
    version: int | None = None
    status: str | None = None
    error: str | None = None


def contend(bookings: BookingFlows, booking_id: str, seed: int) -> list[Answer]:
    """One thread: PER_THREAD conditional changes, re-reading the booking after each refusal."""
    known_version, known_status = BASE_VERSION, "enrolled"
    answers = []
    for n in range(PER_THREAD):
        others = [s for s in STATUSES if s != known_status]
        target = others[(seed + n) % len(others)]
        response = bookings.client.post(
            f"/v1/bookings/{booking_id}/status",
            json={"status": target},
            headers={**bookings.provider, "If-Match": f'"{known_version}"'},
        )
        if response.status_code == 200:
            body = response.json()
            answers.append(Answer(known_version, target, 200, body["version"], body["status"]))
            known_version, known_status = body["version"], body["status"]
            continue
        error = response.json()["error"]["code"] if response.status_code in REFUSALS else response.text
        answers.append(Answer(known_version, target, response.status_code, error=error))
        # The read model may lag: a stale version there simply gives another 412.
        current = bookings.client.get(f"/v1/bookings/{booking_id}", headers=bookings.provider)
        assert current.status_code == 200, current.text
        known_version, known_status = current.json()["version"], current.json()["status"]
    return answers


def test_a_thousand_conditional_changes_on_one_booking_apply_once_or_refuse(bookings: BookingFlows) -> None:
    booking_id = bookings.accepted("anna")
    bookings.caught_up()

    with ThreadPoolExecutor(THREADS) as pool:
        answers = [
            a for batch in pool.map(lambda seed: contend(bookings, booking_id, seed), range(THREADS)) for a in batch
        ]

    assert len(answers) == THREADS * PER_THREAD >= 1_000
    unexpected = [a for a in answers if a.status_code not in (200, *REFUSALS)]
    assert not unexpected, unexpected[:5]
    for answer in answers:
        if answer.status_code in REFUSALS:
            assert answer.error == REFUSALS[answer.status_code], answer
    applied = [a for a in answers if a.status_code == 200]
    assert len(applied) > THREADS, "the drill needs many applied changes"
    assert any(a.status_code == 412 for a in answers), "with 16 writers some If-Match must be stale"
    for answer in applied:
        assert answer.version == answer.if_match + 1, f"applied on another version than If-Match named: {answer}"
        assert answer.status == answer.target
    assert len({a.version for a in applied}) == len(applied), "two writers were told they made the same version"

    app = bookings.app
    booking = app.repository.get(UUID(booking_id))
    assert booking.version == BASE_VERSION + len(applied), "an applied change is missing, or an extra one was stored"
    history = [app.mapper.to_domain_event(e) for e in app.recorder.select_events(UUID(booking_id))]
    stored = {e.originator_version: e.new_status for e in history if type(e).__name__ == "StatusChanged"}  # type: ignore[attr-defined]
    assert stored == {a.version: a.status for a in applied}, "the store differs from what the writers were told"
