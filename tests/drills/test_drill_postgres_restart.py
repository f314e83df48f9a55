"""Drill: PostgreSQL restarted under load (a private cluster, never the shared server on 5432).

The booking service runs on uvicorn over the private cluster; four clients, each on a booking of
its own, alternate status changes and reads. After ~2 s the cluster is stopped (`-m fast`) and
started again ~2 s later. No answer may be a 500 or take longer than a few seconds; an answer given
while the server is down must be a 503; within ~10 s of the restart every client must succeed
again; and every change acknowledged with a 200 must be in the store. While the cluster stays
down, commands (with or without an Idempotency-Key) answer 503 within a few seconds.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import httpx
import pytest

from services.booking.main import create_app
from services.booking.settings import BookingSettings
from shared.eventstore import POOL_TIMEOUT_S
from tests.fixtures.booking import participant
from tests.fixtures.drills import PrivateCluster
from tests.fixtures.services import served
from tests.fixtures.stores import AUTH_SECRET, Tokens

pytestmark = pytest.mark.drill

CLIENTS = 4
LOAD_BEFORE_S = 2.0
OUTAGE_S = 2.0
RECOVERY_BUDGET_S = 10.0
# An answer slower than this counts as hanging. A request that meets the outage waits for a pooled
# connection for up to POOL_TIMEOUT_S (2 s) per database call, then answers 503; one that meets the
# restart finds its connection dead, and runs again on a fresh one.
FAIL_FAST_S = 6.0
# While the server is down, a command answers 503 within the pool's wait and a little more.
DOWN_ANSWER_S = POOL_TIMEOUT_S + 1.5
TARGETS = ("started", "completed")


@dataclass(frozen=True)
class Call:
    kind: str  # "change" or "read"
    started: float
    elapsed: float
    status_code: int  # 0: no answer (client timeout or connection error)
    target: str | None = None
    body: dict | None = None


class Client(threading.Thread):
    """Alternates a status change and a read on one booking until told to stop."""

    def __init__(self, base_url: str, booking_id: str, provider: dict[str, str], stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.http = httpx.Client(base_url=base_url, timeout=FAIL_FAST_S * 2, headers=provider)
        self.booking_id = booking_id
        self.stop_event = stop
        self.calls: list[Call] = []

    def run(self) -> None:
        for n in range(1_000_000):
            if self.stop_event.is_set():
                break
            target = TARGETS[n % 2]
            self._call("change", "POST", f"/v1/bookings/{self.booking_id}/status", target, {"status": target})
            self._call("read", "GET", f"/v1/bookings/{self.booking_id}")
            time.sleep(0.01)
        self.http.close()

    def _call(self, kind: str, method: str, path: str, target: str | None = None, json: dict | None = None) -> None:
        started = time.monotonic()
        try:
            response = self.http.request(method, path, json=json)
            code, body = response.status_code, (response.json() if response.status_code == 200 else None)
        except httpx.HTTPError:
            code, body = 0, None
        self.calls.append(Call(kind, started, time.monotonic() - started, code, target, body))


def make_bookings(http: httpx.Client, tokens: Tokens) -> tuple[dict[str, str], list[str]]:
    """A provider with a product and CLIENTS accepted bookings: the provider's token and the ids."""
    staff = tokens("staff")
    provider = http.post("/v1/providers", json={"name": "Kurs AB"}, headers=staff)
    assert provider.status_code == 201, provider.text
    provider_id = provider.json()["provider_id"]
    product = http.post("/v1/products", json={"provider_id": provider_id, "title": "Drill"}, headers=staff)
    assert product.status_code == 201, product.text
    provider_token = tokens("provider", "prov-user", provider_id=provider_id)
    booking_ids = []
    for n in range(CLIENTS):
        body = {"product_id": product.json()["product_id"], "participant": participant(f"p{n}")}
        requested = http.post("/v1/bookings", json=body, headers=staff)
        assert requested.status_code == 201, requested.text
        booking_id = requested.json()["booking_id"]
        accepted = http.post(f"/v1/bookings/{booking_id}/accept", headers=provider_token)
        assert accepted.status_code == 200, accepted.text
        booking_ids.append(booking_id)
    return provider_token, booking_ids


def test_postgres_restart_under_load_fails_fast_recovers_and_loses_nothing(
    private_postgres: PrivateCluster, tmp_path: Path, tokens: Tokens
) -> None:
    settings = BookingSettings(
        data_dir=tmp_path / "var",
        auth_secret=AUTH_SECRET,
        database_url=private_postgres.url,
        db_pool_size=2,
        lock_timeout_s=2,
        read_your_writes_timeout_s=2.0,
    )
    with served(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        provider, booking_ids = make_bookings(http, tokens)
        stop = threading.Event()
        clients = [Client(server.url, booking_id, provider, stop) for booking_id in booking_ids]
        for client in clients:
            client.start()

        time.sleep(LOAD_BEFORE_S)
        private_postgres.stop("fast")
        down_at = time.monotonic()
        time.sleep(OUTAGE_S)
        up_requested_at = time.monotonic()
        private_postgres.start()
        up_at = time.monotonic()

        recovered_by = time.monotonic() + RECOVERY_BUDGET_S
        while time.monotonic() < recovered_by and not all(recovered(c, up_at) for c in clients):
            time.sleep(0.1)
        time.sleep(0.3)  # a little load after recovery too
        stop.set()
        for client in clients:
            client.join(FAIL_FAST_S * 3)
            assert not client.is_alive(), "a client hung"

        calls = [call for client in clients for call in client.calls]
        assert {c.status_code for c in calls} <= {200, 503}, sorted({c.status_code for c in calls})
        assert max(c.elapsed for c in calls) < FAIL_FAST_S, "an answer took too long: requests must fail fast"

        before = [c for c in calls if c.started + c.elapsed < down_at]
        assert sum(c.status_code == 200 and c.kind == "change" for c in before) >= CLIENTS * 5, "no load before"
        # In flight while the server was down: started before the restart, answered after the stop.
        during = [c for c in calls if c.started < up_requested_at and c.started + c.elapsed > down_at]
        assert len(during) >= CLIENTS, "the outage saw no requests"
        answered_while_down = [c for c in during if c.started + c.elapsed < up_requested_at]
        assert {c.status_code for c in answered_while_down} <= {503}, "an answer while the server was down"
        for client in clients:
            assert recovered(client, up_at), f"no success within {RECOVERY_BUDGET_S}s after the restart"

        app = server.app.state.booking_app
        for client in clients:
            check_acknowledged_changes_are_stored(app, client)


def test_commands_answer_503_within_seconds_while_postgres_is_down(
    private_postgres: PrivateCluster, tmp_path: Path, tokens: Tokens
) -> None:
    settings = BookingSettings(
        data_dir=tmp_path / "var",
        auth_secret=AUTH_SECRET,
        database_url=private_postgres.url,
        db_pool_size=2,
        run_workers=False,
    )
    with served(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        provider, booking_ids = make_bookings(http, tokens)
        private_postgres.stop("fast")

        def change(booking_id: str, status: str, key: str | None = None) -> tuple[int, float]:
            headers = provider | ({"Idempotency-Key": key} if key else {})
            started = time.monotonic()
            response = http.post(f"/v1/bookings/{booking_id}/status", json={"status": status}, headers=headers)
            return response.status_code, time.monotonic() - started

        # The first finds its pooled connection dead, the next ones find no connection at all; a keyed
        # command stops at the idempotency store.
        attempts = zip(booking_ids[:3], ("started", "completed", "no_show"), (None, None, "k-1"), strict=True)
        for booking_id, status, key in attempts:
            code, elapsed = change(booking_id, status, key)
            assert code == 503
            assert elapsed < DOWN_ANSWER_S, f"a command took {elapsed:.1f} s to answer while the database was down"

        private_postgres.start()
        recovered_by = time.monotonic() + RECOVERY_BUDGET_S
        while change(booking_ids[0], "started")[0] != 200:
            assert time.monotonic() < recovered_by, f"no success within {RECOVERY_BUDGET_S}s after the restart"
            time.sleep(0.2)


def recovered(client: Client, up_at: float) -> bool:
    return any(c.status_code == 200 and c.kind == "change" and c.started >= up_at for c in client.calls)


def check_acknowledged_changes_are_stored(app: object, client: Client) -> None:
    """Each 200 names a version whose stored event set that status; the last answer's status is
    the final one unless a later, unanswered (503) attempt went through."""
    events = {
        e.originator_version: e
        for e in map(app.mapper.to_domain_event, app.recorder.select_events(UUID(client.booking_id)))
    }  # type: ignore[attr-defined]
    acknowledged = [c for c in client.calls if c.kind == "change" and c.status_code == 200]
    changed_versions = set()
    for call in acknowledged:
        assert call.body is not None
        version, status = call.body["version"], call.body["status"]
        assert status == call.target
        event = events.get(version)
        assert event is not None, f"acknowledged version {version} is not in the store"
        assert getattr(event, "new_status", None) == status, f"version {version} is not the acknowledged change"
        changed_versions.add(version)
    stored_changes = [e for e in events.values() if type(e).__name__ == "StatusChanged"]
    assert len(stored_changes) >= len(changed_versions), "fewer events than acknowledged changes"
    assert len(changed_versions) > 5
    final = events[max(events)]
    last = client.calls.index(acknowledged[-1])
    later_attempts = {c.target for c in client.calls[last + 1 :] if c.kind == "change"}
    assert final.new_status in {acknowledged[-1].target} | later_attempts  # type: ignore[attr-defined]
