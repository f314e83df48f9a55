"""The production process model: separate API and worker processes on PostgreSQL.

One active consumer per projection (a second worker waits on the advisory lock and takes over
when the first dies), a clean stop on SIGTERM, readiness that follows each dependency, and
settings checked at start.
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.drills import PrivateCluster
from tests.fixtures.notifier import wait_until
from tests.fixtures.processes import (
    SCRIPTS,
    TEST_TUNING,
    WORKER_LEASES,
    ProcessGroup,
    ServiceProcess,
    clean_environment,
    free_port,
    lease_pattern,
    projection_lag,
)
from tests.fixtures.s3 import S3Outage
from tests.fixtures.smtp import SmtpTestServer
from tests.fixtures.stores import AUTH_SECRET, Tokens

pytestmark = pytest.mark.postgres

BOOKING_LEASES = WORKER_LEASES["booking-worker"]
EVENTS_OF_A_COMPLETED_BOOKING = Counter(BookingRequested=1, Accepted=1, StatusChanged=2)
# The standby tries the lock once a second and then starts its runner: a few seconds in all.
TAKEOVER_LIMIT_S = 15.0
STOP_LIMIT_S = 10.0


def booking_env(database_url: str, folder: Path, port: int | None = None) -> dict[str, str]:
    """Settings of a booking process whose own files (none, in production mode) go under `folder`."""
    env = {
        **TEST_TUNING,
        "DATABASE_URL": database_url,
        "AUTH_SECRET": AUTH_SECRET,
        "RUN_WORKERS": "false",
        "DATA_DIR": str(folder / "booking"),
    }
    if port is not None:
        env["BOOKING_PORT"] = str(port)
    return env


class Bookings:
    """Bookings written over the booking API, and what each should look like afterwards."""

    def __init__(self, api: ServiceProcess, tokens: Tokens) -> None:
        self.url = api.url
        self.http = httpx.Client(base_url=api.url, timeout=30)
        self.expected_versions: dict[str, int] = {}
        self.position = 0
        self._lock = threading.Lock()
        self.staff = tokens("staff", "staff-ops")
        provider = self._post("/v1/providers", {"name": "Kurs AB"}, self.staff)
        self.provider = tokens("provider", "provider-ops", provider_id=provider["provider_id"])
        product = self._post(
            "/v1/products", {"provider_id": provider["provider_id"], "title": "Ledarskap"}, self.provider
        )
        self.product_id = product["product_id"]

    def close(self) -> None:
        self.http.close()

    def completed_booking(self, pid: str) -> None:
        participant = {"id": pid, "name": "Test Deltagare", "email": f"{pid}@example.se", "locale": "sv"}
        booking = self._post("/v1/bookings", {"product_id": self.product_id, "participant": participant}, self.staff)
        booking_id = booking["booking_id"]
        self._post(f"/v1/bookings/{booking_id}/accept", None, self.provider)
        for status in ("started", "completed"):
            booking = self._post(f"/v1/bookings/{booking_id}/status", {"status": status}, self.provider)
        with self._lock:
            self.expected_versions[booking_id] = booking["version"]

    def read(self, booking_id: str) -> dict[str, Any]:
        """The booking from the read model, once it has every event written so far."""
        answer = self.http.get(
            f"/v1/bookings/{booking_id}", headers={**self.staff, "X-Min-Position": str(self.position)}
        )
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def assert_read_model_complete(self) -> None:
        """Every booking in the read model, once, at the version its last command returned."""
        for booking_id, version in self.expected_versions.items():
            seen = self.read(booking_id)
            assert (seen["status"], seen["version"]) == ("completed", version), booking_id
        listed = self.http.get("/v1/bookings", params={"limit": 200}, headers=self.staff)
        assert listed.status_code == 200, listed.text
        assert sorted(item["booking_id"] for item in listed.json()["items"]) == sorted(self.expected_versions)

    def assert_audit_exactly_once(self) -> None:
        wait_until(lambda: projection_lag(self.url) == 0, timeout=60, what="the audit trail to catch up")
        for booking_id in self.expected_versions:
            answer = self.http.get("/v1/audit", params={"booking_id": booking_id}, headers=self.staff)
            assert answer.status_code == 200, answer.text
            assert Counter(e["event_type"] for e in answer.json()["items"]) == EVENTS_OF_A_COMPLETED_BOOKING

    def _post(self, path: str, body: dict[str, Any] | None, headers: dict[str, str]) -> dict[str, Any]:
        answer = self.http.post(path, json=body, headers=headers)
        assert answer.status_code in (200, 201), answer.text
        with self._lock:
            self.position = max(self.position, int(answer.headers["X-Event-Position"]))
        return dict(answer.json())


@pytest.fixture
def bookings(processes: ProcessGroup, postgres_url: str, tmp_path: Path, tokens: Tokens) -> Iterator[Bookings]:
    """The booking API (no workers of its own) on a fresh database. Every process of the test is
    stopped at the end, before the database is dropped."""
    port = free_port()
    api = processes.start("booking-api", "booking-api", booking_env(postgres_url, tmp_path, port), port=port)
    api.wait_ready()
    written = Bookings(api, tokens)
    try:
        yield written
    finally:
        written.close()
        processes.stop_all()


def start_booking_worker(processes: ProcessGroup, name: str, database_url: str, tmp_path: Path) -> ServiceProcess:
    return processes.start(name, "booking-worker", booking_env(database_url, tmp_path))


def wait_until_active(worker: ServiceProcess, timeout: float = 90.0) -> None:
    for lease in BOOKING_LEASES:
        worker.wait_for_log(lease_pattern(lease), timeout=timeout)


def test_a_second_booking_worker_waits_and_takes_over_when_the_first_is_killed(
    processes: ProcessGroup, bookings: Bookings, postgres_url: str, tmp_path: Path
) -> None:
    first = start_booking_worker(processes, "booking-worker-a", postgres_url, tmp_path)
    wait_until_active(first)
    second = start_booking_worker(processes, "booking-worker-b", postgres_url, tmp_path)
    second.wait_for_log("workers running")

    bookings.completed_booking("p-before")
    bookings.assert_read_model_complete()
    # Only the first processed anything: the second never held a lease.
    assert second.matching_lines("holds its lease") == []

    first.kill()
    killed_at = time.monotonic()
    bookings.completed_booking("p-after")
    wait_until_active(second, timeout=TAKEOVER_LIMIT_S)
    bookings.assert_read_model_complete()
    assert time.monotonic() - killed_at < TAKEOVER_LIMIT_S


def test_booking_api_replicas_keep_no_state_of_their_own(
    processes: ProcessGroup, bookings: Bookings, postgres_url: str, tmp_path: Path
) -> None:
    """A second replica with a folder of its own: a retry that lands on it is answered from the
    database, and it reads what the first replica wrote."""
    port = free_port()
    replica = processes.start(
        "booking-api-replica", "booking-api", booking_env(postgres_url, tmp_path / "replica", port), port=port
    ).wait_ready()
    start_booking_worker(processes, "booking-worker", postgres_url, tmp_path)
    participant = {"id": "p-replicas", "name": "Test Deltagare", "email": "p-replicas@example.se", "locale": "sv"}
    body = {"product_id": bookings.product_id, "participant": participant}
    headers = {**bookings.staff, "Idempotency-Key": "replicas-1"}

    with httpx.Client(base_url=replica.url, timeout=30) as other:
        first = bookings.http.post("/v1/bookings", json=body, headers=headers)
        retried = other.post("/v1/bookings", json=body, headers=headers)
        assert (first.status_code, retried.status_code) == (201, 201), (first.text, retried.text)
        assert retried.json() == first.json()
        assert retried.headers.get("idempotent-replayed") == "true"

        booking_id = first.json()["booking_id"]
        read_back = {**bookings.staff, "X-Min-Position": first.headers["X-Event-Position"]}
        seen = other.get(f"/v1/bookings/{booking_id}", headers=read_back)
        assert seen.status_code == 200, seen.text
        listed = other.get("/v1/bookings", headers=read_back)
        assert [item["booking_id"] for item in listed.json()["items"]] == [booking_id]


def test_sigterm_stops_a_worker_mid_burst_and_the_next_one_finishes_without_half_state(
    processes: ProcessGroup, bookings: Bookings, postgres_url: str, tmp_path: Path
) -> None:
    worker = start_booking_worker(processes, "booking-worker-1", postgres_url, tmp_path)
    wait_until_active(worker)
    writers = [threading.Thread(target=write_bookings, args=(bookings, f"w{n}", 8)) for n in range(3)]
    for writer in writers:
        writer.start()
    time.sleep(1.0)  # the worker is in the middle of the burst

    stopping = time.monotonic()
    assert worker.terminate(timeout=STOP_LIMIT_S) == 0
    assert time.monotonic() - stopping < STOP_LIMIT_S
    assert worker.matching_lines("workers stopped"), worker.log_tail()

    for writer in writers:
        writer.join()
    successor = start_booking_worker(processes, "booking-worker-2", postgres_url, tmp_path)
    wait_until_active(successor)
    bookings.assert_read_model_complete()
    assert len(bookings.expected_versions) == 24
    # The audit trail appends a row per event: an event handled twice, or lost, would show.
    bookings.assert_audit_exactly_once()


def write_bookings(bookings: Bookings, prefix: str, count: int) -> None:
    for n in range(count):
        bookings.completed_booking(f"{prefix}-{n}")


# --- readiness --------------------------------------------------------------------------------


def readiness(api: ServiceProcess) -> tuple[int, dict[str, Any]]:
    answer = httpx.get(api.url + "/readyz", timeout=30)
    return answer.status_code, answer.json()


def wait_for_readiness(api: ServiceProcess, status: int, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        code, body = readiness(api)
        if code == status:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{api.name} /readyz stayed {code} ({body}), expected {status}")
        time.sleep(0.3)


def test_readyz_is_503_while_a_dependency_is_down(
    private_postgres: PrivateCluster,
    processes: ProcessGroup,
    s3_outage: S3Outage,
    smtp_server: SmtpTestServer,
    tmp_path: Path,
) -> None:
    """Every service on a PostgreSQL cluster of the test's own, which the test stops and starts."""
    database_url = private_postgres.url
    ports = {service: free_port() for service in ("booking", "certificate", "notifier")}
    common = {
        **TEST_TUNING,
        "DATABASE_URL": database_url,
        "AUTH_SECRET": AUTH_SECRET,
        "RUN_WORKERS": "false",
        "BOOKING_URL": f"http://127.0.0.1:{ports['booking']}",
    }
    storage = s3_outage.endpoint
    # As in production, the tables first: processes starting together on an empty database race to create them.
    migrated = processes.run(
        "projections-migrate", "projections", {**common, "DATA_DIR": str(tmp_path / "m")}, "migrate"
    )
    assert migrated.returncode == 0, migrated.stderr
    booking = processes.start(
        "booking-api",
        "booking-api",
        {**common, "BOOKING_PORT": str(ports["booking"]), "DATA_DIR": str(tmp_path / "b")},
        port=ports["booking"],
    )
    certificate = processes.start(
        "certificate-api",
        "certificate-api",
        {
            **common,
            "CERTIFICATE_PORT": str(ports["certificate"]),
            "DATA_DIR": str(tmp_path / "c"),
            "S3_ENDPOINT": storage.endpoint,
            "S3_ACCESS_KEY": storage.access_key,
            "S3_SECRET_KEY": storage.secret_key,
            "S3_BUCKET": "certificates",
            "BOOKING_TIMEOUT_S": "2",
        },
        port=ports["certificate"],
    )
    # The notifier's API depends on the mail server only where it sends mail itself (embedded mode).
    notifier = processes.start(
        "notifier-api",
        "notifier-api",
        {
            **common,
            "RUN_WORKERS": "true",
            "NOTIFIER_PORT": str(ports["notifier"]),
            "DATA_DIR": str(tmp_path / "n"),
            "SMTP_HOST": smtp_server.host,
            "SMTP_PORT": str(smtp_server.port),
        },
        port=ports["notifier"],
    )
    for api in (booking, certificate, notifier):
        api.wait_ready()

    smtp_server.stop()
    assert set(wait_for_readiness(notifier, 503)["failing"]) == {"smtp"}
    smtp_server.start()
    wait_for_readiness(notifier, 200)

    with s3_outage.refusing_connections():
        assert set(wait_for_readiness(certificate, 503)["failing"]) == {"object_storage"}
    # moto comes back empty; a real S3 would come back with its bucket.
    storage.storage("certificates").ensure_ready()
    wait_for_readiness(certificate, 200)
    assert readiness(booking)[0] == 200

    private_postgres.stop()
    assert "database" in wait_for_readiness(booking, 503)["failing"]
    assert "database" in wait_for_readiness(certificate, 503)["failing"]
    assert "database" in wait_for_readiness(notifier, 503)["failing"]
    private_postgres.start()
    for api in (booking, certificate, notifier):
        wait_for_readiness(api, 200)
    registered = httpx.post(
        booking.url + "/v1/providers", json={"name": "Kurs AB"}, headers=Tokens()("staff"), timeout=30
    )
    assert registered.status_code == 201, registered.text

    assert booking.terminate() == 0
    assert "booking_service" in wait_for_readiness(certificate, 503)["failing"]


# --- settings ---------------------------------------------------------------------------------

MISCONFIGURED = [
    ("booking-api", "DATABASE_URL", "mysql://x"),
    ("booking-api", "BOOKING_PORT", "abc"),
    ("certificate-api", "MAX_UPLOAD_BYTES", "-1"),
    ("notifier-worker", "SMTP_TLS", "ssl"),
    ("booking-worker", "LOG_FORMAT", "xml"),
]


def test_a_wrong_setting_stops_the_process_with_a_message_naming_it(tmp_path: Path) -> None:
    started = [
        (
            variable,
            subprocess.Popen(
                [str(SCRIPTS / script)],
                env=clean_environment(
                    {"AUTH_SECRET": AUTH_SECRET, "DATA_DIR": str(tmp_path / uuid.uuid4().hex), variable: value}
                ),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for script, variable, value in MISCONFIGURED
    ]
    for variable, process in started:
        _, stderr = process.communicate(timeout=60)
        assert process.returncode != 0
        assert f"invalid settings: {variable}:" in stderr
        assert "Traceback" not in stderr
