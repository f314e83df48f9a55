"""Rules of the Booking aggregate, without storage: statuses, closing, certificates, consent.

The commands raise the service's AppErrors (status + stable code), so the HTTP answer of each
rule is fixed here already. The stateful test drives random command sequences against a small
model of the rules and checks the invariants after every step.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from services.booking.domain import (
    SETTABLE_STATUSES,
    Actor,
    Booking,
    BookingState,
    CertificateFile,
    CertificateState,
    Status,
)
from shared.errors import AppError, Conflict, Invalid

PROVIDER = Actor("prov-user", "provider")
PARTICIPANT = Actor("anna", "participant")
CERTIFICATION = "Certifierad projektledare"


def new_booking() -> Booking:
    return Booking(
        id=uuid4(),
        product_id=uuid4(),
        provider_id=uuid4(),
        participant={"id": "anna", "name": "Anna Svensson", "email": "anna@example.se", "locale": "sv"},
        employer_id=None,
        actor_id=PARTICIPANT.id,
        actor_role=PARTICIPANT.role,
    )


def accepted_booking() -> Booking:
    booking = new_booking()
    booking.accept(PROVIDER)
    return booking


def completed_booking() -> Booking:
    booking = accepted_booking()
    booking.change_status(Status.COMPLETED, PROVIDER)
    return booking


def certificate_file(*, contains_results: bool = False) -> CertificateFile:
    return CertificateFile(uuid4(), "ab" * 32, 1234, 1, "certificate.pdf", contains_results)


def upload(booking: Booking, *, contains_results: bool = False, certification: str | None = CERTIFICATION) -> UUID:
    certificate = certificate_file(contains_results=contains_results)
    booking.upload_certificate(certificate, certification, datetime.now(UTC), PROVIDER)
    return certificate.certificate_id


def event_names(booking: Booking) -> list[str]:
    return [type(e).__name__ for e in booking.collect_events()]


def replayed(events: list[Any]) -> Booking:
    """The aggregate rebuilt from its events alone, as the repository does."""
    aggregate = None
    for domain_event in events:
        aggregate = domain_event.mutate(aggregate)
    assert isinstance(aggregate, Booking)
    return aggregate


# --- participation status --------------------------------------------------------------------


def test_a_requested_booking_has_status_unknown() -> None:
    booking = new_booking()

    assert booking.status is Status.UNKNOWN
    assert booking.state is BookingState.REQUESTED
    assert event_names(booking) == ["BookingRequested"]
    assert booking.version == 1


def test_accepting_enrolls_the_participant_and_records_the_actor() -> None:
    booking = new_booking()
    booking.collect_events()

    booking.accept(PROVIDER)

    [accepted] = booking.collect_events()
    assert type(accepted).__name__ == "Accepted"
    assert (accepted.actor_id, accepted.actor_role) == ("prov-user", "provider")  # type: ignore[attr-defined]
    assert accepted.timestamp.tzinfo is not None
    assert booking.status is Status.ENROLLED
    assert booking.state is BookingState.ACCEPTED


def test_accepting_twice_records_nothing_new() -> None:
    booking = accepted_booking()
    booking.collect_events()

    booking.accept(PROVIDER)

    assert booking.collect_events() == []


@pytest.mark.parametrize("target", sorted(SETTABLE_STATUSES - {Status.ENROLLED}))
def test_an_accepted_booking_takes_each_status_and_records_old_and_new(target: Status) -> None:
    booking = accepted_booking()
    booking.collect_events()

    booking.change_status(target, PROVIDER)

    [changed] = booking.collect_events()
    assert type(changed).__name__ == "StatusChanged"
    assert (changed.old_status, changed.new_status) == ("enrolled", target.value)  # type: ignore[attr-defined]
    assert booking.status is target


@pytest.mark.parametrize("start", sorted(SETTABLE_STATUSES - {Status.ENROLLED}))
def test_a_status_can_be_corrected_back_to_enrolled(start: Status) -> None:
    booking = accepted_booking()
    booking.change_status(start, PROVIDER)

    booking.change_status(Status.ENROLLED, PROVIDER)

    assert booking.status is Status.ENROLLED
    assert booking.version == 4


def test_the_five_settable_statuses_are_exactly_the_ones_after_unknown() -> None:
    assert {s.value for s in SETTABLE_STATUSES} == {"enrolled", "started", "no_show", "failed", "completed"}


def test_setting_the_same_status_again_records_nothing() -> None:
    booking = accepted_booking()
    booking.change_status(Status.STARTED, PROVIDER)
    booking.collect_events()
    version = booking.version

    booking.change_status(Status.STARTED, PROVIDER)

    assert booking.collect_events() == []
    assert booking.version == version


def test_status_cannot_change_before_acceptance() -> None:
    booking = new_booking()
    booking.collect_events()

    with pytest.raises(Conflict) as refused:
        booking.change_status(Status.STARTED, PROVIDER)

    assert (refused.value.status_code, refused.value.code) == (409, "booking_not_accepted")
    assert "accept" in refused.value.message
    assert booking.collect_events() == []
    assert booking.status is Status.UNKNOWN


@pytest.mark.parametrize("close", ["decline", "cancel"])
def test_a_closed_booking_cannot_change_at_all(close: str) -> None:
    booking = new_booking()
    if close == "decline":
        booking.decline("fully booked", PROVIDER)
    else:
        booking.cancel("changed my mind", PARTICIPANT)
    booking.collect_events()

    for command in (
        lambda: booking.change_status(Status.STARTED, PROVIDER),
        lambda: booking.accept(PROVIDER),
        lambda: booking.cancel("again", PROVIDER),
        lambda: booking.give_results_consent(PARTICIPANT),
    ):
        with pytest.raises(Conflict) as refused:
            command()
        assert (refused.value.status_code, refused.value.code) == (409, "booking_closed")
    assert booking.collect_events() == []


def test_a_cancelled_accepted_booking_cannot_change_status() -> None:
    booking = accepted_booking()
    booking.change_status(Status.STARTED, PROVIDER)
    booking.cancel("the course was cancelled", PROVIDER)

    with pytest.raises(Conflict) as refused:
        booking.change_status(Status.COMPLETED, PROVIDER)

    assert refused.value.code == "booking_closed"
    assert booking.status is Status.STARTED


def test_an_accepted_booking_cannot_be_declined() -> None:
    booking = accepted_booking()

    with pytest.raises(Conflict) as refused:
        booking.decline("too late", PROVIDER)

    assert refused.value.code == "booking_accepted"


def test_unknown_cannot_be_set() -> None:
    booking = accepted_booking()
    booking.collect_events()

    with pytest.raises(Invalid) as refused:
        booking.change_status(Status.UNKNOWN, PROVIDER)

    assert (refused.value.status_code, refused.value.code) == (422, "invalid_status")
    assert "enrolled" in refused.value.message
    assert booking.collect_events() == []


# --- certificates ----------------------------------------------------------------------------


def test_changing_away_from_completed_revokes_the_active_certificate_and_says_why() -> None:
    booking = completed_booking()
    certificate_id = upload(booking)
    booking.collect_events()

    booking.change_status(Status.FAILED, PROVIDER)

    changed, revoked = booking.collect_events()
    assert type(changed).__name__ == "StatusChanged"
    assert type(revoked).__name__ == "CertificateRevoked"
    assert revoked.certificate_id == certificate_id  # type: ignore[attr-defined]
    assert "completed" in revoked.reason and "failed" in revoked.reason  # type: ignore[attr-defined]
    assert booking.active_certificate is None
    assert booking.certificates[certificate_id]["state"] == CertificateState.REVOKED


def test_changing_status_without_a_certificate_revokes_nothing() -> None:
    booking = completed_booking()
    booking.collect_events()

    booking.change_status(Status.STARTED, PROVIDER)

    assert event_names(booking) == ["StatusChanged"]


def test_cancelling_revokes_the_active_certificate() -> None:
    booking = completed_booking()
    certificate_id = upload(booking)
    booking.collect_events()

    booking.cancel("the participant left the programme", PROVIDER)

    assert event_names(booking) == ["CertificateRevoked", "Cancelled"]
    assert booking.certificates[certificate_id]["state"] == CertificateState.REVOKED


def test_withdrawing_consent_revokes_a_certificate_with_results() -> None:
    booking = completed_booking()
    booking.give_results_consent(PARTICIPANT)
    certificate_id = upload(booking, contains_results=True)
    booking.collect_events()

    booking.withdraw_results_consent(PARTICIPANT)

    withdrawn, revoked = booking.collect_events()
    assert type(withdrawn).__name__ == "ResultsConsentWithdrawn"
    assert revoked.certificate_id == certificate_id  # type: ignore[attr-defined]
    assert "consent" in revoked.reason  # type: ignore[attr-defined]
    assert booking.active_certificate is None


def test_withdrawing_consent_keeps_a_certificate_without_results() -> None:
    booking = completed_booking()
    booking.give_results_consent(PARTICIPANT)
    certificate_id = upload(booking, contains_results=False)
    booking.collect_events()

    booking.withdraw_results_consent(PARTICIPANT)

    assert event_names(booking) == ["ResultsConsentWithdrawn"]
    assert booking.active_certificate_id == certificate_id


def test_consent_given_twice_records_one_event() -> None:
    booking = accepted_booking()
    booking.collect_events()

    booking.give_results_consent(PARTICIPANT)
    booking.give_results_consent(PARTICIPANT)
    booking.withdraw_results_consent(PARTICIPANT)
    booking.withdraw_results_consent(PARTICIPANT)

    assert event_names(booking) == ["ResultsConsentGiven", "ResultsConsentWithdrawn"]


@pytest.mark.parametrize("status", sorted(SETTABLE_STATUSES - {Status.COMPLETED}))
def test_upload_needs_status_completed(status: Status) -> None:
    booking = accepted_booking()
    booking.change_status(status, PROVIDER)
    booking.collect_events()

    with pytest.raises(Conflict) as refused:
        upload(booking)

    assert (refused.value.status_code, refused.value.code) == (409, "booking_not_completed")
    assert "Completed" in refused.value.message
    assert booking.collect_events() == []


def test_upload_needs_an_accepted_booking() -> None:
    with pytest.raises(Conflict) as refused:
        upload(new_booking())

    assert refused.value.code == "booking_not_accepted"


def test_upload_needs_a_certification_on_the_product() -> None:
    booking = completed_booking()
    booking.collect_events()

    with pytest.raises(Conflict) as refused:
        upload(booking, certification=None)

    assert (refused.value.status_code, refused.value.code) == (409, "certification_missing")
    assert "add a certification to the product first" in refused.value.message
    assert booking.collect_events() == []


def test_results_need_the_participants_consent() -> None:
    booking = completed_booking()
    booking.collect_events()

    with pytest.raises(Conflict) as refused:
        upload(booking, contains_results=True)

    assert (refused.value.status_code, refused.value.code) == (409, "results_consent_missing")
    assert "consent" in refused.value.message
    assert booking.collect_events() == []


def test_an_upload_records_what_the_certificate_service_learnt() -> None:
    booking = completed_booking()
    booking.collect_events()
    certificate = certificate_file()
    issued_at = datetime(2024, 3, 5, 10, 0, tzinfo=UTC)

    booking.upload_certificate(certificate, CERTIFICATION, issued_at, PROVIDER)

    [uploaded] = booking.collect_events()
    assert type(uploaded).__name__ == "CertificateUploaded"
    recorded = {
        name: getattr(uploaded, name)
        for name in (
            "certificate_id",
            "sha256",
            "size",
            "page_count",
            "file_name",
            "contains_results",
            "certification_name",
            "issued_at",
            "supersedes",
        )
    }
    assert recorded == {
        "certificate_id": certificate.certificate_id,
        "sha256": certificate.sha256,
        "size": 1234,
        "page_count": 1,
        "file_name": "certificate.pdf",
        "contains_results": False,
        "certification_name": CERTIFICATION,
        "issued_at": issued_at,
        "supersedes": None,
    }


def test_a_new_upload_supersedes_the_active_certificate() -> None:
    booking = completed_booking()
    first = upload(booking)
    booking.collect_events()

    second = upload(booking)

    [uploaded] = booking.collect_events()
    assert uploaded.supersedes == first  # type: ignore[attr-defined]
    assert booking.certificates[first]["state"] == CertificateState.SUPERSEDED
    assert booking.certificates[second]["state"] == CertificateState.VALID
    assert booking.active_certificate_id == second


def test_a_superseded_certificate_cannot_be_revoked() -> None:
    booking = completed_booking()
    first = upload(booking)
    upload(booking)

    with pytest.raises(Conflict) as refused:
        booking.revoke_certificate(first, "wrong person", PROVIDER)

    assert refused.value.code == "certificate_not_valid"


def test_revocation_needs_a_reason() -> None:
    booking = completed_booking()
    certificate_id = upload(booking)
    booking.collect_events()

    with pytest.raises(Invalid) as refused:
        booking.revoke_certificate(certificate_id, "   ", PROVIDER)

    assert refused.value.code == "reason_required"
    assert booking.collect_events() == []


def test_an_unknown_certificate_cannot_be_revoked() -> None:
    with pytest.raises(Conflict) as refused:
        completed_booking().revoke_certificate(uuid4(), "typo", PROVIDER)

    assert refused.value.code == "certificate_unknown"


def test_review_needs_a_completed_course_and_a_rating_from_1_to_5() -> None:
    booking = accepted_booking()
    with pytest.raises(Conflict) as early:
        booking.submit_review(5, "great", PARTICIPANT)
    booking.change_status(Status.COMPLETED, PROVIDER)
    with pytest.raises(Invalid) as out_of_range:
        booking.submit_review(6, None, PARTICIPANT)
    booking.collect_events()

    booking.submit_review(4, "Bra kurs", PARTICIPANT)

    assert early.value.code == "booking_not_completed"
    assert out_of_range.value.code == "invalid_rating"
    assert event_names(booking) == ["ReviewSubmitted"]
    assert booking.review == {"rating": 4, "text": "Bra kurs"}


# --- random command sequences against a model ------------------------------------------------


class BookingRules(RuleBasedStateMachine):
    """Drives one booking with random commands; a small model predicts what must happen."""

    @initialize()
    def request(self) -> None:
        self.booking = new_booking()
        self.events: list[Any] = list(self.booking.collect_events())
        self.model_state = BookingState.REQUESTED
        self.model_status = Status.UNKNOWN
        self.model_consent = False
        self.retired: set[UUID] = set()

    def _run(self, command: Any, *, allowed: bool, expect: int) -> bool:
        """Runs one command; the model says whether it is allowed and how many events it records."""
        before = self.booking.version
        try:
            command()
        except AppError as error:
            assert not allowed, f"refused although allowed: {error.code}"
            new = self.booking.collect_events()
            assert new == [], "a refused command must record nothing"
            assert self.booking.version == before
            return False
        assert allowed, "accepted although the rules forbid it"
        new = list(self.booking.collect_events())
        assert len(new) == expect, [type(e).__name__ for e in new]
        self.events.extend(new)
        return True

    @property
    def is_open(self) -> bool:
        return self.model_state in (BookingState.REQUESTED, BookingState.ACCEPTED)

    @property
    def is_accepted(self) -> bool:
        return self.model_state is BookingState.ACCEPTED

    def _active_revocations(self) -> int:
        return 1 if self.booking.active_certificate_id is not None else 0

    @rule()
    def accept(self) -> None:
        newly = self.model_state is BookingState.REQUESTED
        if self._run(lambda: self.booking.accept(PROVIDER), allowed=self.is_open, expect=1 if newly else 0) and newly:
            self.model_state, self.model_status = BookingState.ACCEPTED, Status.ENROLLED

    @rule()
    def decline(self) -> None:
        allowed = self.model_state is BookingState.REQUESTED
        if self._run(lambda: self.booking.decline("no seats", PROVIDER), allowed=allowed, expect=1):
            self.model_state = BookingState.DECLINED

    @rule()
    def cancel(self) -> None:
        expect = 1 + self._active_revocations()
        if self._run(lambda: self.booking.cancel("plans changed", PARTICIPANT), allowed=self.is_open, expect=expect):
            self.model_state = BookingState.CANCELLED

    @rule(status=st.sampled_from(list(Status)))
    def change_status(self, status: Status) -> None:
        allowed = status is not Status.UNKNOWN and self.is_accepted
        changes = status is not self.model_status
        revokes = changes and self.model_status is Status.COMPLETED and self.booking.active_certificate_id is not None
        expect = (1 + int(revokes)) if changes else 0
        if self._run(lambda: self.booking.change_status(status, PROVIDER), allowed=allowed, expect=expect):
            self.model_status = status

    @rule(given=st.booleans())
    def consent(self, given: bool) -> None:
        active = self.booking.active_certificate
        changes = given != self.model_consent
        revokes = changes and not given and active is not None and active["contains_results"]
        expect = (1 + int(revokes)) if changes else 0
        if given:
            command = lambda: self.booking.give_results_consent(PARTICIPANT)  # noqa: E731
        else:
            command = lambda: self.booking.withdraw_results_consent(PARTICIPANT)  # noqa: E731
        if self._run(command, allowed=self.is_open, expect=expect):
            self.model_consent = given

    @rule(contains_results=st.booleans(), with_certification=st.booleans())
    def upload(self, contains_results: bool, with_certification: bool) -> None:
        allowed = (
            self.is_accepted
            and self.model_status is Status.COMPLETED
            and with_certification
            and (self.model_consent or not contains_results)
        )
        previous = self.booking.active_certificate_id
        certificate = certificate_file(contains_results=contains_results)
        certification = CERTIFICATION if with_certification else None

        def command() -> None:
            self.booking.upload_certificate(certificate, certification, datetime.now(UTC), PROVIDER)

        if self._run(command, allowed=allowed, expect=1) and previous is not None:
            self.retired.add(previous)

    @precondition(lambda self: bool(self.booking.certificates))
    @rule(data=st.data(), reason=st.sampled_from(["wrong name", " "]))
    def revoke(self, data: st.DataObject, reason: str) -> None:
        certificate_id = data.draw(st.sampled_from(sorted(self.booking.certificates, key=str)))
        valid = self.booking.certificates[certificate_id]["state"] == CertificateState.VALID
        allowed = valid and bool(reason.strip())
        if self._run(
            lambda: self.booking.revoke_certificate(certificate_id, reason, PROVIDER), allowed=allowed, expect=1
        ):
            self.retired.add(certificate_id)

    @rule(rating=st.integers(min_value=-1, max_value=7))
    def review(self, rating: int) -> None:
        allowed = self.is_accepted and self.model_status is Status.COMPLETED and 1 <= rating <= 5
        self._run(lambda: self.booking.submit_review(rating, "ok", PARTICIPANT), allowed=allowed, expect=1)

    # --- invariants ---

    @invariant()
    def follows_the_model(self) -> None:
        assert self.booking.state is self.model_state
        assert self.booking.status is self.model_status
        assert self.booking.results_consent is self.model_consent

    @invariant()
    def version_counts_the_events(self) -> None:
        assert self.booking.version == len(self.events)
        assert [e.originator_version for e in self.events] == list(range(1, len(self.events) + 1))

    @invariant()
    def status_changes_only_while_accepted_and_open(self) -> None:
        status = Status.UNKNOWN
        accepted, open_ = False, True
        for domain_event in self.events:
            name = type(domain_event).__name__
            if name == "StatusChanged":
                assert accepted and open_
                assert domain_event.old_status == status.value
                status = Status(domain_event.new_status)
            elif name == "Accepted":
                accepted, status = True, Status.ENROLLED
            elif name in ("Declined", "Cancelled"):
                open_ = False

    @invariant()
    def at_most_one_active_certificate(self) -> None:
        valid = [cid for cid, c in self.booking.certificates.items() if c["state"] == CertificateState.VALID]
        assert len(valid) <= 1
        assert valid == ([self.booking.active_certificate_id] if self.booking.active_certificate_id else [])

    @invariant()
    def retired_certificates_stay_retired(self) -> None:
        for certificate_id in self.retired:
            assert self.booking.certificates[certificate_id]["state"] != CertificateState.VALID
            assert self.booking.active_certificate_id != certificate_id

    @invariant()
    def replaying_the_events_gives_the_same_booking(self) -> None:
        rebuilt = replayed(self.events)
        assert (rebuilt.state, rebuilt.status, rebuilt.results_consent) == (
            self.booking.state,
            self.booking.status,
            self.booking.results_consent,
        )
        assert rebuilt.certificates == self.booking.certificates
        assert rebuilt.active_certificate_id == self.booking.active_certificate_id
        assert rebuilt.version == self.booking.version


BookingRules.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_booking_command_sequences = BookingRules.TestCase
