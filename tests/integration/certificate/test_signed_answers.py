"""Kept verification answers (SignedAnswers) over a real certificate registry, SQLite and PostgreSQL:
served byte for byte while the registry has not moved, rebuilt once it has (within the recheck
interval, at once for X-Min-Position), once they are too old, and never for unknown ids.

Registry rows are written with the view's own write method, each with its tracking position, as the
projection writes them; the clock is a fake one, so the time bounds are checked exactly.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.persistence import Tracking

from services.booking.application import BookingApplication
from services.certificate.projections import CERTIFICATE_REGISTRY, CertificateRegistry
from services.certificate.settings import CertificateSettings
from services.certificate.signed_answers import SignedAnswer, SignedAnswers
from services.certificate.signing import AnswerSigner, generate_signing_key, verify_detached
from shared.feed import open_view

UPSTREAM = BookingApplication.name
RECHECK_S = 0.5
MAX_AGE_S = 60.0
JWKS_URL = "https://certificates.example/.well-known/jwks.json"
SIGNER = AnswerSigner({"keys": [generate_signing_key("key-a")]})


class FakeClock:
    def __init__(self) -> None:
        self.monotonic = 1000.0
        self.wall = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

    def advance(self, seconds: float) -> None:
        self.monotonic += seconds
        self.wall += timedelta(seconds=seconds)


@pytest.fixture
def registry(service_env: dict[str, Any]) -> Iterator[CertificateRegistry]:
    view = open_view(CertificateSettings(**service_env), CERTIFICATE_REGISTRY)
    try:
        yield view
    finally:
        view.datastore.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class Registry:
    """Writes registry rows as the projection does: each change with the next tracking position."""

    def __init__(self, view: CertificateRegistry) -> None:
        self.view = view
        self.position = 0
        self.provider_id, self.product_id = str(uuid4()), str(uuid4())
        self._write(
            (
                "INSERT INTO certificate_registry_providers (provider_id, name, logo_url, linkedin_organization_id)"
                " VALUES (:id, 'Kurs AB', NULL, '1337')",
                {"id": self.provider_id},
            ),
            (
                "INSERT INTO certificate_registry_products (product_id, provider_id, title, certification_name)"
                " VALUES (:id, :provider, 'Projektledning', 'Certifierad projektledare')",
                {"id": self.product_id, "provider": self.provider_id},
            ),
        )

    def issue(self) -> str:
        booking_id, certificate_id = str(uuid4()), str(uuid4())
        self._write(
            (
                "INSERT INTO certificate_registry_bookings (booking_id, product_id, provider_id, participant_id,"
                " participant_name, employer_id, holder_public) VALUES (:b, :p, :pr, 'anna', 'Anna Svensson', NULL, 0)",
                {"b": booking_id, "p": self.product_id, "pr": self.provider_id},
            ),
            (
                "INSERT INTO certificate_registry (certificate_id, booking_id, sha256, size, page_count, file_name,"
                " contains_results, certification_name, state, issued_at) VALUES (:c, :b, :sha, 1000, 1, 'intyg.pdf',"
                " 0, 'Certifierad projektledare', 'valid', '2025-02-01T10:00:00+00:00')",
                {"c": certificate_id, "b": booking_id, "sha": uuid4().hex * 2},
            ),
        )
        return certificate_id

    def revoke(self, certificate_id: str) -> None:
        self._write(
            (
                "UPDATE certificate_registry SET state = 'revoked', revoked_at = '2025-03-01T12:00:00+00:00',"
                " revocation_reason = 'issued in error' WHERE certificate_id = :c",
                {"c": certificate_id},
            )
        )

    def make_public(self, certificate_id: str) -> None:
        self._write(
            (
                "UPDATE certificate_registry_bookings SET holder_public = 1"
                " WHERE booking_id = (SELECT booking_id FROM certificate_registry WHERE certificate_id = :c)",
                {"c": certificate_id},
            )
        )

    def unrelated_event(self) -> None:
        self.position += 1
        self.view.record(Tracking(notification_id=self.position, application_name=UPSTREAM))

    def _write(self, *statements: tuple[str, dict[str, Any]]) -> None:
        self.position += 1
        self.view.write(Tracking(notification_id=self.position, application_name=UPSTREAM), *statements)


def signed_answers(
    view: CertificateRegistry, clock: FakeClock, signer: AnswerSigner = SIGNER, **options: Any
) -> SignedAnswers:
    return SignedAnswers(
        view,
        signer,
        jwks_url=JWKS_URL,
        upstream=UPSTREAM,
        catch_up=lambda position: view.wait(UPSTREAM, position, timeout=5),
        recheck_s=RECHECK_S,
        max_age_s=MAX_AGE_S,
        clock=lambda: clock.monotonic,
        now=lambda: clock.wall,
        **options,
    )


def sent(answer: SignedAnswer) -> dict[str, Any]:
    return json.loads(answer.json.body)  # type: ignore[no-any-return]


def test_a_kept_answer_is_byte_identical_to_a_fresh_one_and_its_signature_verifies(
    registry: CertificateRegistry, clock: FakeClock
) -> None:
    rows = Registry(registry)
    certificate_id = rows.issue()
    answers = signed_answers(registry, clock)

    first = answers.answer(certificate_id)
    clock.advance(RECHECK_S / 2)
    assert answers.kept(certificate_id) is first
    assert answers.kept(certificate_id.upper()) is first  # any spelling of the id
    assert answers.answer(certificate_id) is first

    fresh = signed_answers(registry, clock).answer(certificate_id)
    assert fresh is not first and fresh.json.body == first.json.body  # Ed25519 signatures are deterministic
    assert fresh.json.etag == first.json.etag
    body = sent(first)
    assert body["checked_at"] == "2025-03-01T12:00:00+00:00" and body["state"] == "valid"
    unsigned = {name: value for name, value in body.items() if name != "signature"}
    assert unsigned == first.facts
    assert verify_detached(unsigned, body["signature"]["jws"], SIGNER.jwks())
    assert body["signature"] == {"jws": body["signature"]["jws"], "kid": "key-a", "jwks_url": JWKS_URL}


@pytest.mark.parametrize("change", ["revoke", "make_public"])
def test_a_change_reaches_the_answer_within_the_recheck_interval(
    registry: CertificateRegistry, clock: FakeClock, change: str
) -> None:
    rows = Registry(registry)
    certificate_id = rows.issue()
    answers = signed_answers(registry, clock)
    before = answers.answer(certificate_id)

    getattr(rows, change)(certificate_id)
    clock.advance(RECHECK_S)
    assert answers.answer(certificate_id) is before, "the registry was read again before the interval ran out"
    clock.advance(0.001)
    assert answers.kept(certificate_id) is None
    after = answers.answer(certificate_id)

    if change == "revoke":
        assert (before.facts["state"], after.facts["state"]) == ("valid", "revoked")
        assert after.facts["revoked_at"] == "2025-03-01T12:00:00+00:00"
        assert "issued in error" not in after.json.body.decode()
    else:
        assert (before.facts["holder"]["name"], after.facts["holder"]["name"]) == (None, "Anna Svensson")
    assert after.json.etag != before.json.etag
    assert answers.answer(certificate_id) is after


@pytest.mark.parametrize("moved", [False, True])
def test_the_position_is_read_again_before_hits_find_it_stale(
    registry: CertificateRegistry, clock: FakeClock, moved: bool
) -> None:
    rows = Registry(registry)
    certificate_id = rows.issue()
    answers = signed_answers(registry, clock)
    first = answers.answer(certificate_id)
    clock.advance(RECHECK_S / 2)
    assert not answers.observation_due()

    clock.advance(0.001)
    assert answers.observation_due()
    assert not answers.observation_due(), "due once until observed"
    if moved:
        rows.revoke(certificate_id)
    answers.observe()
    assert not answers.observation_due()
    clock.advance(RECHECK_S / 2 + 0.002)  # past the interval of the first read, within that of the second
    assert answers.kept(certificate_id) is (None if moved else first)


def test_read_your_writes_gets_the_change_at_once(registry: CertificateRegistry, clock: FakeClock) -> None:
    rows = Registry(registry)
    certificate_id = rows.issue()
    answers = signed_answers(registry, clock)
    before = answers.answer(certificate_id)
    assert answers.kept(certificate_id, min_position=rows.position) is before

    rows.revoke(certificate_id)
    assert answers.kept(certificate_id, min_position=rows.position) is None
    revoked = answers.answer(certificate_id, min_position=rows.position)
    assert revoked.facts["state"] == "revoked"
    assert answers.kept(certificate_id) is revoked, "the newer answer is kept for everyone"


def test_any_registry_change_rebuilds_kept_answers_with_the_same_facts(
    registry: CertificateRegistry, clock: FakeClock
) -> None:
    rows = Registry(registry)
    certificate_id = rows.issue()
    answers = signed_answers(registry, clock)
    before = answers.answer(certificate_id)

    rows.unrelated_event()
    clock.advance(RECHECK_S + 1)
    after = answers.answer(certificate_id)
    assert after is not before
    assert after.facts == {**before.facts, "checked_at": "2025-03-01T12:00:01+00:00"}


def test_an_answer_is_rebuilt_once_too_old(registry: CertificateRegistry, clock: FakeClock) -> None:
    rows = Registry(registry)
    certificate_id = rows.issue()
    answers = signed_answers(registry, clock)
    first = answers.answer(certificate_id)

    for _ in range(int(MAX_AGE_S / RECHECK_S)):
        clock.advance(RECHECK_S)
        assert answers.answer(certificate_id) is first
    clock.advance(RECHECK_S)
    older = sent(first)["checked_at"]
    rebuilt = answers.answer(certificate_id)
    assert rebuilt is not first
    assert datetime.fromisoformat(rebuilt.facts["checked_at"]) > datetime.fromisoformat(older)


def test_unknown_and_malformed_ids_are_answered_but_never_kept(registry: CertificateRegistry, clock: FakeClock) -> None:
    Registry(registry).issue()
    answers = signed_answers(registry, clock)
    for asked in (str(uuid4()), "not-a-uuid"):
        answer = answers.answer(asked)
        assert answer.state == "not_found" and sent(answer)["certificate_id"] == asked
        assert answers.kept(asked) is None
        assert answers.answer(asked) is not answer


def test_the_oldest_answer_goes_first_when_the_store_is_full(registry: CertificateRegistry, clock: FakeClock) -> None:
    rows = Registry(registry)
    first, second, third = rows.issue(), rows.issue(), rows.issue()
    answers = signed_answers(registry, clock, max_kept=2)
    for certificate_id in (first, second, third):
        answers.answer(certificate_id)
    assert answers.kept(first) is None
    assert answers.kept(second) is not None and answers.kept(third) is not None


class RegistryMovingDuringRead:
    """The registry, where the first read of `certificate_id` is overtaken: after the row is read, the
    certificate is revoked and another request observes the new position before the answer is kept."""

    def __init__(self, rows: Registry, certificate_id: str, overtake: Any) -> None:
        self._rows = rows
        self._certificate_id = certificate_id
        self._overtake = overtake

    def get(self, certificate_id: str) -> Any:
        row = self._rows.view.get(certificate_id)
        if certificate_id == self._certificate_id and self._overtake is not None:
            overtake, self._overtake = self._overtake, None
            self._rows.revoke(certificate_id)
            overtake()
        return row

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rows.view, name)


def test_an_answer_overtaken_by_a_registry_change_is_not_kept(registry: CertificateRegistry, clock: FakeClock) -> None:
    rows = Registry(registry)
    certificate_id = rows.issue()
    answers: SignedAnswers

    def other_request_observes_the_change() -> None:
        # Read-your-writes makes it read the registry's position (a malformed id builds nothing).
        answers.answer("not-a-uuid", min_position=rows.position)

    moving = RegistryMovingDuringRead(rows, certificate_id, other_request_observes_the_change)
    answers = signed_answers(moving, clock)  # type: ignore[arg-type]
    overtaken = answers.answer(certificate_id)
    assert overtaken.state == "valid"  # what the registry held when this request read it
    assert answers.kept(certificate_id) is None, "an answer older than the observed position was kept"
    assert answers.answer(certificate_id).state == "revoked"


class SlowRegistry:
    """The registry, where reading a certificate waits until the test lets it go on."""

    def __init__(self, view: CertificateRegistry) -> None:
        self._view = view
        self.reads = 0
        self.reading = threading.Event()
        self.go_on = threading.Event()

    def get(self, certificate_id: str) -> Any:
        self.reads += 1
        self.reading.set()
        assert self.go_on.wait(timeout=10)
        return self._view.get(certificate_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._view, name)


def test_requests_missing_the_same_answer_together_build_it_once(
    registry: CertificateRegistry, clock: FakeClock
) -> None:
    certificate_id = Registry(registry).issue()
    slow = SlowRegistry(registry)
    answers = signed_answers(slow, clock)  # type: ignore[arg-type]
    with ThreadPoolExecutor(max_workers=8) as pool:
        requests = [pool.submit(answers.answer, certificate_id) for _ in range(8)]
        assert slow.reading.wait(timeout=10)
        time.sleep(0.1)  # the others are waiting by now (or come after the answer is kept)
        slow.go_on.set()
        served = {id(request.result(timeout=10)) for request in requests}
    assert (slow.reads, len(served)) == (1, 1)


def test_requests_missing_together_on_the_event_loop_await_one_build(
    registry: CertificateRegistry, clock: FakeClock
) -> None:
    certificate_id = Registry(registry).issue()
    answers = signed_answers(registry, clock)
    answers.answer(certificate_id)  # the position is observed: no request reads it again now
    clock.advance(MAX_AGE_S + 0.001)  # the kept answer is too old: the next requests miss it
    threads_taken: list[str] = []
    build = answers.answer

    def answer_in_a_thread(asked_id: str, min_position: int | None = None) -> SignedAnswer:
        threads_taken.append(asked_id)
        return build(asked_id, min_position)

    answers.answer = answer_in_a_thread  # type: ignore[method-assign]

    async def together() -> list[SignedAnswer]:
        return await asyncio.gather(*(answers.answer_soon(certificate_id) for _ in range(8)))

    served = asyncio.run(together())
    assert threads_taken == [certificate_id]
    assert len({id(answer) for answer in served}) == 1
    assert asyncio.run(answers.answer_soon(certificate_id)) is served[0] and threads_taken == [certificate_id]
