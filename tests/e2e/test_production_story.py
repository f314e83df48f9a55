"""The seed's whole story in production mode: every service a separate OS process on PostgreSQL,
S3 (moto's server) and SMTP (aiosmtpd, STARTTLS with a login), played over real HTTP.

Then each worker is killed (SIGKILL) and restarted while a burst of bookings is written: no event
is lost or handled twice (read models match the commands and a rebuild, one reminder per booking,
at most one duplicate mail per notifier crash, with the same Message-ID). Along the way: a request
id crosses from the certificate service to the booking service, logs are JSON only, no secret is
logged, and every process stops with status 0 on SIGTERM.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.certificate.signing import verify_detached
from tests.fixtures.notifier import LINKEDIN_ADD, linkedin_links, wait_until
from tests.fixtures.processes import ProductionStack, ServiceProcess, metric_samples, projection_lag

pytestmark = pytest.mark.postgres

CORPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "pdf-corpus"
CERTIFICATE_PDF = (CORPUS / "002-trivial-libre-office-writer" / "002-trivial-libre-office-writer.pdf").read_bytes()
BURST_PDF = (CORPUS / "001-trivial" / "minimal-document.pdf").read_bytes()
REQUEST_ID = "e2e-123"
LINKEDIN_ORGANIZATION = "1337"
COURSE = "Projektledning i praktiken"
CERTIFICATION = "Certifierad projektledare"
REVOCATION_REASON = "Intyget utfärdades till fel person"
MAIL_TIMEOUT_S = 60.0
# Longer than the notifier's poll interval (0.2 s) and a send: a mail that was going out has arrived.
QUIET_S = 2.0
STOP_LIMIT_S = 10.0

BURST_WRITERS = 3
BURST_PER_WRITER = 8
UPLOAD_EVERY = 4  # every fourth burst booking also gets a certificate
# Worker killed once this many burst bookings are complete (mid-run, while the others are written).
CRASH_AFTER = {"booking-worker": 4, "certificate-worker": 9, "notifier-worker": 14}


class Api:
    """One service over HTTP; remembers the highest X-Event-Position it was given."""

    def __init__(self, process: ServiceProcess) -> None:
        self.http = httpx.Client(base_url=process.url, timeout=60)
        self.position = 0
        self._lock = threading.Lock()

    def call(
        self, method: str, path: str, headers: dict[str, str], expected: int = 200, **kwargs: Any
    ) -> httpx.Response:
        answer = self.http.request(method, path, headers=headers, **kwargs)
        assert answer.status_code == expected, f"{method} {path}: {answer.status_code} {answer.text}"
        if "X-Event-Position" in answer.headers:
            self.note(int(answer.headers["X-Event-Position"]))
        return answer

    def note(self, position: int) -> None:
        with self._lock:
            self.position = max(self.position, position)

    def caught_up(self, headers: dict[str, str], position: int | None = None) -> dict[str, str]:
        return {**headers, "X-Min-Position": str(self.position if position is None else position)}


@dataclass
class Story:
    stack: ProductionStack
    booking: Api
    certificate: Api
    notifier: Api
    staff: dict[str, str]
    provider: dict[str, str] = field(default_factory=dict)
    product_id: str = ""

    @property
    def smtp_messages(self) -> list[EmailMessage]:
        return self.stack.smtp.messages

    def participant(self, pid: str) -> dict[str, str]:
        return self.stack.tokens("participant", pid)

    def request_booking(self, pid: str, locale: str, headers: dict[str, str]) -> str:
        participant = {"id": pid, "name": "Anna Svensson", "email": f"{pid}@example.se", "locale": locale}
        body = {"product_id": self.product_id, "participant": participant, "employer_id": "acme"}
        return str(self.booking.call("POST", "/v1/bookings", headers, 201, json=body).json()["booking_id"])

    def set_status(self, booking_id: str, status: str) -> dict[str, Any]:
        path = f"/v1/bookings/{booking_id}/status"
        return dict(self.booking.call("POST", path, self.provider, json={"status": status}).json())

    def upload(self, booking_id: str, content: bytes, headers: dict[str, str] | None = None) -> str:
        answer = self.certificate.call(
            "POST",
            f"/v1/bookings/{booking_id}/certificate",
            {**self.provider, **(headers or {})},
            201,
            files={"file": ("intyg.pdf", content, "application/pdf")},
        )
        # The booking service recorded the upload: its position is a booking event position.
        self.booking.note(int(answer.headers["X-Event-Position"]))
        return str(answer.json()["certificate_id"])

    def verify(self, certificate_id: str) -> dict[str, Any]:
        headers = self.certificate.caught_up({"Accept": "application/json"}, self.booking.position)
        return dict(self.certificate.call("GET", f"/verify/{certificate_id}", headers).json())

    def audit(self, booking_id: str) -> list[dict[str, Any]]:
        answer = self.booking.call("GET", "/v1/audit", self.staff, params={"booking_id": booking_id, "limit": 500})
        return list(answer.json()["items"])


@pytest.fixture
def story(production_stack: ProductionStack) -> Iterator[Story]:
    stack = production_stack
    played = Story(
        stack=stack,
        booking=Api(stack.booking),
        certificate=Api(stack.certificate),
        notifier=Api(stack.notifier),
        staff=stack.tokens("staff", "staff-eva"),
    )
    yield played
    for api in (played.booking, played.certificate, played.notifier):
        api.http.close()


def test_the_whole_story_in_production_mode_survives_worker_crashes(story: Story) -> None:
    play_the_seed_story(story)
    assert_request_id_crossed_services(story.stack)
    write_a_burst_while_killing_each_worker(story)
    assert_every_process_stops_on_sigterm(story.stack)
    assert_logs_are_json_without_secrets(story.stack)


# --- the seed's story ---------------------------------------------------------------------------


def play_the_seed_story(story: Story) -> None:
    booking, certificate = story.booking, story.certificate
    provider_id = booking.call(
        "POST",
        "/v1/providers",
        story.staff,
        201,
        json={"name": "Kurs AB", "linkedin_organization_id": LINKEDIN_ORGANIZATION},
    ).json()["provider_id"]
    story.provider = story.stack.tokens("provider", "provider-per", provider_id=provider_id)
    story.product_id = booking.call(
        "POST", "/v1/products", story.provider, 201, json={"provider_id": provider_id, "title": COURSE}
    ).json()["product_id"]
    booking.call("PUT", f"/v1/products/{story.product_id}/certification", story.provider, json={"name": CERTIFICATION})

    anna = story.participant("anna")
    booking_id = story.request_booking("anna", "sv", anna)
    booking.call("POST", f"/v1/bookings/{booking_id}/accept", story.provider)
    story.set_status(booking_id, "started")
    story.set_status(booking_id, "completed")

    certificate_id = story.upload(booking_id, CERTIFICATE_PDF, {"X-Request-ID": REQUEST_ID})

    (reminder,) = story.stack.smtp.wait_for(1, timeout=MAIL_TIMEOUT_S)
    assert reminder["To"].addresses[0].addr_spec == "anna@example.se"
    assert reminder["Subject"] == f"Vad tyckte du om {COURSE}?"

    reviewed = booking.call(
        "POST", f"/v1/bookings/{booking_id}/review", anna, json={"rating": 5, "text": "Mycket givande!"}
    )
    linkedin_add_url = reviewed.json()["linkedin_add_url"]
    assert linkedin_add_url.startswith(LINKEDIN_ADD)
    assert f"organizationId={LINKEDIN_ORGANIZATION}" in linkedin_add_url
    assert f"certId={certificate_id}" in linkedin_add_url

    invitation = story.stack.smtp.wait_for(2, timeout=MAIL_TIMEOUT_S)[1]
    assert invitation["To"].addresses[0].addr_spec == "anna@example.se"
    assert invitation["Subject"] == f"Lägg till ditt certifikat för {COURSE} på LinkedIn"
    assert linkedin_links(invitation) == [linkedin_add_url]

    assert_public_verification(story, certificate_id, "valid")
    downloaded = certificate.call(
        "GET", f"/v1/certificates/{certificate_id}/file", certificate.caught_up(anna, booking.position)
    )
    assert downloaded.content == CERTIFICATE_PDF

    revoked = certificate.call(
        "POST", f"/v1/certificates/{certificate_id}/revoke", story.provider, json={"reason": REVOCATION_REASON}
    )
    story.booking.note(int(revoked.headers["X-Event-Position"]))
    answer = assert_public_verification(story, certificate_id, "revoked")
    assert answer["revoked_at"]

    assert_audit_trail(story, booking_id)
    notifications = story.notifier.call("GET", "/v1/notifications", story.staff, params={"booking_id": booking_id})
    assert sorted(n["state"] for n in notifications.json()["items"]) == ["sent", "sent"]
    time.sleep(QUIET_S)
    assert [m["Subject"] for m in story.smtp_messages] == [reminder["Subject"], invitation["Subject"]]


def assert_public_verification(story: Story, certificate_id: str, state: str) -> dict[str, Any]:
    """No token; the answer is signed with a key published at /.well-known/jwks.json."""
    answer = story.verify(certificate_id)
    assert answer["state"] == state
    assert answer["certification"]["name"] == CERTIFICATION
    assert answer["provider"]["name"] == "Kurs AB"
    assert answer["holder"] == {"name": None, "initials": "A. S."}
    assert "anna@example.se" not in str(answer)
    signature = answer.pop("signature")
    jwks = story.certificate.call("GET", "/.well-known/jwks.json", {}).json()
    assert verify_detached(answer, signature["jws"], jwks)
    assert not verify_detached({**answer, "state": "valid" if state != "valid" else "revoked"}, signature["jws"], jwks)
    return answer


def assert_audit_trail(story: Story, booking_id: str) -> None:
    """Every step with its actor, the download included (the audit trail is a read model: wait for it)."""
    expected = Counter(
        {
            ("BookingRequested", "anna", "participant"): 1,
            ("Accepted", "provider-per", "provider"): 1,
            ("StatusChanged", "provider-per", "provider"): 2,
            ("CertificateUploaded", "provider-per", "provider"): 1,
            ("ReviewSubmitted", "anna", "participant"): 1,
            ("CertificateDownloaded", "anna", "participant"): 1,
            ("CertificateRevoked", "provider-per", "provider"): 1,
        }
    )

    wait_until(
        lambda: len(story.audit(booking_id)) >= expected.total(), timeout=30, what="every step in the audit trail"
    )
    entries = story.audit(booking_id)
    assert Counter((e["event_type"], e["actor_id"], e["actor_role"]) for e in entries) == expected
    (revocation,) = (e for e in entries if e["event_type"] == "CertificateRevoked")
    assert revocation["summary"]["reason"] == REVOCATION_REASON


def assert_request_id_crossed_services(stack: ProductionStack) -> None:
    """The upload's X-Request-ID reached the booking service with the certificate service's calls."""
    booking_routes = {r["route"] for r in stack.booking.json_records() if r.get("request_id") == REQUEST_ID}
    assert booking_routes == {
        "/internal/v1/bookings/{booking_id}/certificates/check",
        "/internal/v1/bookings/{booking_id}/certificates",
    }
    assert any(r.get("request_id") == REQUEST_ID and r.get("status") == 201 for r in stack.certificate.json_records())


# --- crashes during a burst ---------------------------------------------------------------------


@dataclass
class Burst:
    expected_versions: dict[str, int] = field(default_factory=dict)
    certificates: dict[str, str] = field(default_factory=dict)
    completed: int = 0
    changed: threading.Condition = field(default_factory=threading.Condition)
    errors: list[BaseException] = field(default_factory=list)


def write_a_burst_while_killing_each_worker(story: Story) -> None:
    mails_before = len({m["Message-ID"] for m in story.smtp_messages})
    burst = Burst()
    writers = [threading.Thread(target=write_bookings, args=(story, burst, n)) for n in range(BURST_WRITERS)]
    for writer in writers:
        writer.start()
    for worker, after in CRASH_AFTER.items():
        with burst.changed:
            assert burst.changed.wait_for(
                lambda after=after: burst.completed >= after or bool(burst.errors), timeout=120
            )
        story.stack.workers[worker].kill()
        story.stack.restart_worker(worker)
    for writer in writers:
        writer.join()
    assert not burst.errors, burst.errors
    assert len(burst.expected_versions) == BURST_WRITERS * BURST_PER_WRITER

    story.stack.wait_until_workers_active()
    assert_read_models_complete(story, burst)
    assert_events_written_metric(story)
    assert_one_reminder_per_booking(story, burst, mails_before)
    assert_rebuild_changes_nothing(story)


def write_bookings(story: Story, burst: Burst, writer: int) -> None:
    try:
        for n in range(BURST_PER_WRITER):
            pid = f"burst-{writer}-{n}"
            booking_id = story.request_booking(pid, ("sv", "en")[n % 2], story.staff)
            story.booking.call("POST", f"/v1/bookings/{booking_id}/accept", story.provider)
            story.set_status(booking_id, "started")
            version = story.set_status(booking_id, "completed")["version"]
            if n % UPLOAD_EVERY == 0:
                burst.certificates[booking_id] = story.upload(booking_id, BURST_PDF)
                version += 1
            with burst.changed:
                burst.expected_versions[booking_id] = version
                burst.completed += 1
                burst.changed.notify_all()
    except BaseException as error:  # handed to the test thread, which fails with it
        with burst.changed:
            burst.errors.append(error)
            burst.changed.notify_all()
        raise


def assert_read_models_complete(story: Story, burst: Burst) -> None:
    """Every booking once, at the version its last command returned; every certificate registered."""
    booking, staff = story.booking, story.staff
    for booking_id, version in burst.expected_versions.items():
        seen = booking.call("GET", f"/v1/bookings/{booking_id}", booking.caught_up(staff)).json()
        assert (seen["status"], seen["version"]) == ("completed", version), booking_id
        assert (seen["certificate"] or {}).get("certificate_id") == burst.certificates.get(booking_id)
    for booking_id, certificate_id in burst.certificates.items():
        registered = story.certificate.call(
            "GET", f"/v1/certificates/{certificate_id}", story.certificate.caught_up(staff, booking.position)
        ).json()
        assert (registered["booking_id"], registered["state"]) == (booking_id, "valid")
    listed = all_bookings(story)
    assert len(listed) == len(burst.expected_versions) + 1  # and the story's booking
    assert set(burst.expected_versions) <= set(listed)

    wait_until(lambda: projection_lag(story.stack.booking.url) == 0, timeout=60, what="the audit trail to catch up")
    for booking_id in burst.expected_versions:
        event_types = Counter(e["event_type"] for e in story.audit(booking_id))
        uploads = 1 if booking_id in burst.certificates else 0
        assert event_types == Counter(BookingRequested=1, Accepted=1, StatusChanged=2, CertificateUploaded=uploads)


def assert_events_written_metric(story: Story) -> None:
    """Every booking event came from a command of this test, which returned its position; the
    certificate service recorded the one download (the access log opened, then the download)."""

    def written(api: ServiceProcess) -> dict[str, float]:
        return {sample.labels["application"]: sample.value for sample in metric_samples(api.url, "events_written")}

    assert written(story.stack.booking) == {"booking": story.booking.position}
    assert written(story.stack.certificate) == {"certificate": 2}


def assert_one_reminder_per_booking(story: Story, burst: Burst, mails_before: int) -> None:
    """A notifier killed between sending and recording sends that mail again after its restart,
    with the same Message-ID: at most one such duplicate per crash."""
    expected = mails_before + len(burst.expected_versions)

    def distinct_ids() -> set[str]:
        return {m["Message-ID"] for m in story.smtp_messages}

    wait_until(lambda: len(distinct_ids()) >= expected, timeout=MAIL_TIMEOUT_S, what=f"{expected} distinct mails")
    time.sleep(QUIET_S)
    messages = story.smtp_messages
    assert len(distinct_ids()) == expected
    assert len(messages) <= expected + 1  # one notifier crash
    message_ids_by_recipient: dict[str, set[str]] = {}
    for message in messages:
        message_ids_by_recipient.setdefault(message["To"].addresses[0].addr_spec, set()).add(message["Message-ID"])
    burst_addresses = {f"{pid}@example.se" for pid in burst_participants()}
    assert {address for address in message_ids_by_recipient if address.startswith("burst-")} == burst_addresses
    assert all(len(message_ids_by_recipient[address]) == 1 for address in burst_addresses)


def burst_participants() -> list[str]:
    return [f"burst-{w}-{n}" for w in range(BURST_WRITERS) for n in range(BURST_PER_WRITER)]


def assert_rebuild_changes_nothing(story: Story) -> None:
    """The booking read model equals a replay of every event from the start."""
    before = all_bookings(story)
    rebuilt = story.stack.group.run(
        "projections-rebuild",
        "projections",
        story.stack.env["booking"],
        "rebuild",
        "booking_summaries",
        "--timeout",
        "120",
        timeout=180,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert all_bookings(story) == before


def all_bookings(story: Story) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    cursor = None
    while True:
        params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        page = story.booking.call("GET", "/v1/bookings", story.booking.caught_up(story.staff), params=params).json()
        found.update({item["booking_id"]: item for item in page["items"]})
        cursor = page["next_cursor"]
        if not cursor:
            return found


# --- stopping, logs -----------------------------------------------------------------------------


def assert_every_process_stops_on_sigterm(stack: ProductionStack) -> None:
    for process in stack.all:
        started = time.monotonic()
        assert process.terminate(timeout=STOP_LIMIT_S) == 0, process.log_tail()
        assert time.monotonic() - started < STOP_LIMIT_S


def assert_logs_are_json_without_secrets(stack: ProductionStack) -> None:
    for process in stack.all:
        assert process.log_lines_not_json() == [], process.name
    # Every log of the run, the command-line tools' too.
    for log in sorted(stack.group.log_dir.glob("*.log")):
        text = log.read_text(errors="replace")
        leaked = [name for name, value in stack.secrets.markers().items() if value in text]
        assert leaked == [], f"{log.name} has {leaked}"
