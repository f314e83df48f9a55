"""The notifier's rules on real booking events (the booking application in memory produces them):
which notifications the process schedules or cancels, their ids, and the Notification's own rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.application import ProcessingEvent
from eventsourcing.persistence import Tracking

from services.booking.application import BookingApplication
from services.booking.domain import Actor, Booking, CertificateFile, Status
from services.notifier.application import NotifierProcess
from services.notifier.domain import (
    Notification,
    NotificationState,
    RetrySchedule,
    linkedin_invite_cause,
    notification_id,
    review_reminder_cause,
)
from services.notifier.messages import MessageKind
from shared.auth import Principal, Role
from shared.errors import Conflict

IN_MEMORY = {"PERSISTENCE_MODULE": "eventsourcing.popo"}
STAFF = Principal("staff-1", Role.STAFF)
CERTIFICATE_SERVICE = Principal("service:certificate", Role.SERVICE)
REVIEW_DELAY = timedelta(minutes=5)
LINKEDIN_DELAY = timedelta(seconds=30)


def notifier_process() -> NotifierProcess:
    return NotifierProcess(
        env=IN_MEMORY
        | {
            "NOTIFIER_REVIEW_REMINDER_DELAY_S": str(REVIEW_DELAY.total_seconds()),
            "NOTIFIER_LINKEDIN_INVITE_DELAY_S": "30",
        }
    )


class Scenario:
    """Commands on the booking application; `follow()` feeds its new events to the notifier process."""

    def __init__(self, *, linkedin_page: str | None = "1337") -> None:
        self.booking_app = BookingApplication(env=IN_MEMORY)
        self.notifier = notifier_process()
        provider = self.booking_app.register_provider(
            STAFF, provider_id=None, name="Kurs AB", linkedin_organization_id=linkedin_page, logo_url=None
        ).aggregate
        product = self.booking_app.register_product(
            STAFF, product_id=None, provider_id=provider.id, title="Projektledning"
        ).aggregate
        self.booking_app.define_certification(STAFF, product.id, "Certifierad projektledare")
        self.product_id = product.id
        self.position = 0

    def booking(self, pid: str = "anna", locale: str = "sv", *, accepted: bool = True) -> UUID:
        participant = {"id": pid, "name": "Anna Svensson", "email": f"{pid}@example.se", "locale": locale}
        booking = self.booking_app.request_booking(
            STAFF, booking_id=None, product_id=self.product_id, participant=participant, employer_id=None
        ).aggregate
        if accepted:
            self.booking_app.accept(STAFF, booking.id)
        return UUID(str(booking.id))

    def status(self, booking_id: UUID, status: Status) -> None:
        self.booking_app.change_status(STAFF, booking_id, status)

    def upload(self, booking_id: UUID) -> str:
        certificate = CertificateFile(uuid4(), "0" * 64, 100, 1, "intyg.pdf", contains_results=False)
        self.booking_app.record_certificate_upload(CERTIFICATE_SERVICE, booking_id, certificate, Actor("p", "provider"))
        return str(certificate.certificate_id)

    def review(self, booking_id: UUID, pid: str = "anna") -> None:
        self.booking_app.submit_review(Principal(pid, Role.PARTICIPANT), booking_id, 4, None)

    def booking_events(self, after: int = 0) -> list[tuple[Any, Tracking]]:
        notifications = self.booking_app.recorder.select_notifications(start=after + 1, limit=10_000)
        return [
            (self.booking_app.mapper.to_domain_event(n), Tracking(BookingApplication.name, n.id)) for n in notifications
        ]

    def follow(self) -> None:
        for event, tracking in self.booking_events(self.position):
            self.notifier.process_event(event, tracking)
            self.position = tracking.notification_id

    def notifications(self, booking_id: UUID, kind: MessageKind | None = None) -> list[Notification]:
        found = []
        for stored in self.notifier.recorder.select_notifications(start=1, limit=10_000):
            event = self.notifier.mapper.to_domain_event(stored)
            if isinstance(event, Notification.NotificationScheduled) and event.booking_id == booking_id:
                notification = self.notifier.get_notification(event.originator_id)
                assert notification is not None
                if kind is None or notification.kind is kind:
                    found.append(notification)
        return found

    def status_change_version(self, booking_id: UUID, new_status: Status) -> tuple[int, datetime]:
        changes = [
            e
            for e, _ in self.booking_events()
            if isinstance(e, Booking.StatusChanged) and e.originator_id == booking_id
        ]
        last = [e for e in changes if e.new_status == new_status][-1]
        return last.originator_version, last.timestamp

    def mark_sent(self, notification: Notification) -> None:
        """What the sender records after a delivery."""
        notification.record_sent(f"<{notification.id}@localhost>", datetime.now(UTC))
        self.notifier.save(notification)


def completed(scenario: Scenario, **booking: Any) -> UUID:
    booking_id = scenario.booking(**booking)
    scenario.status(booking_id, Status.COMPLETED)
    return booking_id


def test_completion_schedules_one_review_reminder_named_after_its_cause() -> None:
    scenario = Scenario()
    booking_id = completed(scenario, locale="en")
    scenario.follow()

    (reminder,) = scenario.notifications(booking_id)
    version, completed_at = scenario.status_change_version(booking_id, Status.COMPLETED)
    assert reminder.id == notification_id(MessageKind.REVIEW_REMINDER, review_reminder_cause(booking_id, version))
    assert reminder.kind is MessageKind.REVIEW_REMINDER
    assert reminder.state is NotificationState.SCHEDULED
    assert reminder.recipient == {"name": "Anna Svensson", "email": "anna@example.se"}
    assert reminder.locale == "en"
    assert reminder.content == {"course_title": "Projektledning", "provider_name": "Kurs AB"}
    assert reminder.due_at == completed_at + REVIEW_DELAY


def test_another_process_fed_the_same_events_names_the_same_notifications() -> None:
    scenario = Scenario()
    booking_id = completed(scenario)
    scenario.upload(booking_id)
    scenario.review(booking_id)
    scenario.follow()

    twin = notifier_process()
    for event, tracking in scenario.booking_events():
        twin.process_event(event, tracking)

    ids = {n.id for n in scenario.notifications(booking_id)}
    assert len(ids) == 2
    assert all(twin.get_notification(i) is not None for i in ids)
    assert twin.recorder.max_notification_id() == scenario.notifier.recorder.max_notification_id()


def test_a_status_changed_away_from_completed_cancels_the_pending_reminder() -> None:
    scenario = Scenario()
    booking_id = completed(scenario)
    scenario.status(booking_id, Status.STARTED)
    scenario.follow()

    (reminder,) = scenario.notifications(booking_id)
    assert reminder.state is NotificationState.CANCELLED
    assert reminder.cancel_reason is not None and "from completed to started" in reminder.cancel_reason

    scenario.status(booking_id, Status.COMPLETED)  # completed again: a new cause
    scenario.follow()
    first, second = scenario.notifications(booking_id)
    assert first.id == reminder.id
    assert second.state is NotificationState.SCHEDULED and second.id != reminder.id


def test_a_sent_reminder_is_neither_cancelled_nor_repeated() -> None:
    scenario = Scenario()
    booking_id = completed(scenario)
    scenario.follow()
    (reminder,) = scenario.notifications(booking_id)
    scenario.mark_sent(reminder)

    scenario.status(booking_id, Status.FAILED)
    scenario.status(booking_id, Status.COMPLETED)
    scenario.follow()

    (still,) = scenario.notifications(booking_id)
    assert still.state is NotificationState.SENT


def test_no_new_reminder_once_the_participant_has_reviewed() -> None:
    scenario = Scenario()
    booking_id = completed(scenario)
    scenario.review(booking_id)
    scenario.status(booking_id, Status.STARTED)
    scenario.status(booking_id, Status.COMPLETED)
    scenario.follow()

    (reminder,) = scenario.notifications(booking_id, MessageKind.REVIEW_REMINDER)
    assert reminder.state is NotificationState.CANCELLED


@pytest.mark.parametrize(("linkedin_page", "organization_id"), [("1337", "1337"), (None, "")])
def test_a_review_with_a_valid_certificate_schedules_the_linkedin_invitation(
    linkedin_page: str | None, organization_id: str
) -> None:
    scenario = Scenario(linkedin_page=linkedin_page)
    booking_id = completed(scenario)
    certificate_id = scenario.upload(booking_id)
    scenario.review(booking_id)
    scenario.follow()

    (invite,) = scenario.notifications(booking_id, MessageKind.LINKEDIN_INVITE)
    uploaded = scenario.booking_app.get_booking(STAFF, booking_id).certificates[UUID(certificate_id)]
    assert invite.id == notification_id(MessageKind.LINKEDIN_INVITE, linkedin_invite_cause(certificate_id))
    assert invite.content == {
        "course_title": "Projektledning",
        "provider_name": "Kurs AB",
        "certificate_id": certificate_id,
        "certification_name": "Certifierad projektledare",
        "issued_at": uploaded["issued_at"].isoformat(),
        "organization_id": organization_id,
    }
    assert invite.due_at - invite.created_on == pytest.approx(LINKEDIN_DELAY, abs=timedelta(seconds=1))


def test_no_invitation_without_a_certificate_then_one_when_it_is_uploaded_whatever_the_reviews() -> None:
    scenario = Scenario()
    booking_id = completed(scenario)
    scenario.review(booking_id)
    scenario.follow()
    assert scenario.notifications(booking_id, MessageKind.LINKEDIN_INVITE) == []

    certificate_id = scenario.upload(booking_id)
    scenario.review(booking_id)  # a second review: same certificate, same cause
    scenario.follow()

    (invite,) = scenario.notifications(booking_id, MessageKind.LINKEDIN_INVITE)
    assert invite.content["certificate_id"] == certificate_id


def test_a_revoked_certificate_gets_no_invitation_and_loses_a_pending_one() -> None:
    scenario = Scenario()
    revoked_first = completed(scenario, pid="rita")
    certificate_id = scenario.upload(revoked_first)
    scenario.booking_app.revoke_certificate(STAFF, revoked_first, UUID(certificate_id), "wrong person")
    scenario.review(revoked_first, "rita")

    revoked_later = completed(scenario, pid="sune")
    later_certificate = scenario.upload(revoked_later)
    scenario.review(revoked_later, "sune")
    scenario.follow()
    (pending,) = scenario.notifications(revoked_later, MessageKind.LINKEDIN_INVITE)
    scenario.booking_app.revoke_certificate(STAFF, revoked_later, UUID(later_certificate), "wrong grade")
    scenario.follow()

    assert scenario.notifications(revoked_first, MessageKind.LINKEDIN_INVITE) == []
    cancelled = scenario.notifier.get_notification(pending.id)
    assert cancelled is not None and cancelled.state is NotificationState.CANCELLED
    assert cancelled.cancel_reason == "the certificate was revoked: wrong grade"


def test_a_superseded_certificate_loses_its_invitation_to_the_new_one() -> None:
    scenario = Scenario()
    booking_id = completed(scenario)
    old = scenario.upload(booking_id)
    scenario.review(booking_id)
    new = scenario.upload(booking_id)
    scenario.follow()

    invites = {n.content["certificate_id"]: n for n in scenario.notifications(booking_id, MessageKind.LINKEDIN_INVITE)}
    assert invites[old].state is NotificationState.CANCELLED
    assert invites[old].cancel_reason == "the certificate was superseded by a newer one"
    assert invites[new].state is NotificationState.SCHEDULED


def test_declined_bookings_get_nothing_and_cancelled_ones_lose_what_is_pending() -> None:
    scenario = Scenario()
    declined = scenario.booking("dan", accepted=False)
    scenario.booking_app.decline(STAFF, declined, "fully booked")
    cancelled = completed(scenario, pid="cecilia")
    scenario.upload(cancelled)
    scenario.review(cancelled, "cecilia")
    scenario.follow()
    assert len(scenario.notifications(cancelled)) == 2

    scenario.booking_app.cancel(STAFF, cancelled, "rebooked")
    scenario.follow()

    assert scenario.notifications(declined) == []
    reminder, invite = scenario.notifications(cancelled)
    assert reminder.state is invite.state is NotificationState.CANCELLED
    assert reminder.cancel_reason == "the booking was cancelled"
    assert invite.cancel_reason is not None and invite.cancel_reason.startswith("the certificate was revoked")


def test_events_handled_again_change_nothing() -> None:
    scenario = Scenario()
    booking_id = completed(scenario)
    certificate_id = scenario.upload(booking_id)
    scenario.review(booking_id)
    scenario.booking_app.revoke_certificate(STAFF, booking_id, UUID(certificate_id), "typo")
    scenario.status(booking_id, Status.STARTED)
    scenario.follow()

    for event, _ in scenario.booking_events():
        replayed = ProcessingEvent[UUID]()
        scenario.notifier.policy(event, replayed)
        assert replayed.events == [], type(event).__qualname__


# --- the Notification's own rules ---------------------------------------------------------------

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
DOUBLING = RetrySchedule(max_attempts=3, delay_s=lambda attempt: 10.0 * 2 ** (attempt - 1))


def scheduled() -> Notification:
    return Notification(
        id=notification_id(MessageKind.REVIEW_REMINDER, "booking:x:completed-at-version:3"),
        kind=MessageKind.REVIEW_REMINDER.value,
        cause="booking:x:completed-at-version:3",
        booking_id=uuid4(),
        recipient={"name": "Anna", "email": "anna@example.se"},
        locale="sv",
        content={"course_title": "Projektledning", "provider_name": "Kurs AB"},
        not_before=NOW,
    )


def event_names(notification: Notification) -> list[str]:
    return [type(e).__name__ for e in notification.collect_events()]


def test_a_notification_is_due_from_its_not_before() -> None:
    notification = scheduled()
    assert not notification.is_due(NOW - timedelta(seconds=1))
    assert notification.is_due(NOW)


def test_a_notification_is_never_sent_twice() -> None:
    notification = scheduled()
    notification.record_sent("<a@localhost>", NOW)
    with pytest.raises(Conflict) as refused:
        notification.record_sent("<a@localhost>", NOW)
    assert refused.value.code == "already_sent"
    assert not notification.is_due(NOW + timedelta(days=1))


def test_only_a_pending_notification_can_be_cancelled() -> None:
    notification = scheduled()
    notification.record_sent("<a@localhost>", NOW)
    notification.collect_events()
    assert notification.cancel("status changed") is False
    assert event_names(notification) == []
    assert notification.state is NotificationState.SENT


def test_a_send_that_raced_a_cancellation_is_recorded_as_sent() -> None:
    notification = scheduled()
    assert notification.cancel("status changed")
    notification.record_sent("<a@localhost>", NOW)
    assert notification.state is NotificationState.SENT


def test_failures_back_off_then_park_the_notification_as_a_dead_letter() -> None:
    notification = scheduled()
    notification.record_failure("421 try later", permanent=False, now=NOW, schedule=DOUBLING)
    assert (notification.state, notification.due_at) == (NotificationState.FAILED, NOW + timedelta(seconds=10))
    notification.record_failure("421 try later", permanent=False, now=NOW, schedule=DOUBLING)
    assert notification.due_at == NOW + timedelta(seconds=20)
    notification.record_failure("421 try later", permanent=False, now=NOW, schedule=DOUBLING)

    assert notification.state is NotificationState.DEAD
    assert (notification.attempts, notification.last_error) == (3, "421 try later")
    assert event_names(notification)[-2:] == ["DeliveryFailed", "NotificationDeadLettered"]
    assert not notification.is_due(NOW + timedelta(days=1))


def test_a_permanent_rejection_parks_it_at_once_and_a_requeue_starts_a_new_round() -> None:
    notification = scheduled()
    notification.record_failure("550 no such user", permanent=True, now=NOW, schedule=DOUBLING)
    assert (notification.state, notification.attempts) == (NotificationState.DEAD, 1)

    notification.requeue("staff-1", "staff", NOW + timedelta(hours=1))
    assert notification.is_due(NOW + timedelta(hours=1))
    notification.record_failure("421 busy", permanent=False, now=NOW, schedule=DOUBLING)
    assert (notification.state, notification.attempts) == (NotificationState.FAILED, 2)


def test_only_a_dead_letter_can_be_requeued_and_a_cancelled_one_ignores_late_failures() -> None:
    notification = scheduled()
    with pytest.raises(Conflict) as refused:
        notification.requeue("staff-1", "staff", NOW)
    assert refused.value.code == "not_dead_letter"

    notification.cancel("booking cancelled")
    notification.collect_events()
    notification.record_failure("421 busy", permanent=False, now=NOW, schedule=DOUBLING)
    assert event_names(notification) == []
    assert notification.state is NotificationState.CANCELLED
