"""Notifier bounded context: the reminders to send, and what the notifier knows about each booking.

Pure domain. A `Notification`'s id is derived from its kind and its cause (the upstream event or
certificate that made it necessary), so meeting the same cause again — a second review, a restart,
a replay — names the existing notification instead of creating a second one.

The mirrors (`BookingFollowUp`, `ProviderCard`, `ProductCard`) are the notifier's own copies of
the booking service's facts, built from its events. Each remembers the last upstream version it
applied (`seen_version`), so an event that is processed again (a replay) changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from services.notifier.messages import MessageKind
from shared.errors import Conflict

# Fixed forever: every notification id is derived from it.
NAMESPACE = UUID("6f1d0c3a-5b8e-4e57-a3c2-9d4b7e2f1a60")

MAX_ERROR_LENGTH = 1000


class NotificationState(StrEnum):
    SCHEDULED = "scheduled"
    FAILED = "failed"  # the last attempt failed; another one is scheduled
    SENT = "sent"
    DEAD = "dead"  # parked as a dead letter until staff requeue it
    CANCELLED = "cancelled"


PENDING_STATES = frozenset({NotificationState.SCHEDULED, NotificationState.FAILED})


def notification_id(kind: MessageKind, cause: str) -> UUID:
    return uuid5(NAMESPACE, f"{MessageKind(kind).value}:{cause}")


def review_reminder_cause(booking_id: UUID, status_version: int) -> str:
    """Each time a booking becomes completed is a cause of its own."""
    return f"booking:{booking_id}:completed-at-version:{status_version}"


def linkedin_invite_cause(certificate_id: str) -> str:
    """One invitation per certificate, however many reviews follow."""
    return f"certificate:{certificate_id}"


@dataclass(frozen=True)
class RetrySchedule:
    max_attempts: int
    delay_s: Callable[[int], float]
    """Seconds to wait after failed attempt number n (1-based) of the current round."""


class Notification(Aggregate):
    @event("NotificationScheduled")
    def __init__(
        self,
        id: UUID,
        kind: str,
        cause: str,
        booking_id: UUID,
        recipient: dict[str, str],
        locale: str,
        content: dict[str, str],
        not_before: datetime,
    ) -> None:
        self.kind = MessageKind(kind)
        self.cause = cause
        self.booking_id = booking_id
        self.recipient = recipient
        self.locale = locale
        self.content = content
        self.state = NotificationState.SCHEDULED
        self.due_at = not_before
        self.attempts = 0
        self.attempts_in_round = 0  # a requeue starts a new round of MAX_ATTEMPTS
        self.last_error: str | None = None
        self.cancel_reason: str | None = None
        self.message_id: str | None = None
        self.sent_at: datetime | None = None

    @property
    def is_pending(self) -> bool:
        return self.state in PENDING_STATES

    def is_due(self, now: datetime) -> bool:
        return self.is_pending and self.due_at <= now

    # --- rules -------------------------------------------------------------------------------

    def cancel(self, reason: str) -> bool:
        """Only a notification still waiting to be sent can be cancelled; says whether it was."""
        if not self.is_pending:
            return False
        self._cancelled(reason)
        return True

    def record_sent(self, message_id: str, sent_at: datetime) -> None:
        if self.state is NotificationState.SENT:
            raise Conflict("This notification was already sent; it is never sent twice.", code="already_sent")
        if self.state is NotificationState.DEAD:
            raise Conflict("A dead letter is not sent until it is requeued.", code="dead_letter")
        # A cancellation recorded while the mail was on its way does not unsend it: the record says sent.
        self._sent(message_id, sent_at, self.attempts + 1)

    def record_failure(self, error: str, *, permanent: bool, now: datetime, schedule: RetrySchedule) -> None:
        """Schedules the next attempt with backoff, or parks the notification as a dead letter after
        a permanent rejection or the last attempt of the round. A failure of a notification that
        stopped being pending meanwhile (cancelled) changes nothing: no mail went out."""
        if not self.is_pending:
            return
        error = error[:MAX_ERROR_LENGTH]
        attempt_in_round = self.attempts_in_round + 1
        next_attempt_at = None
        if not permanent and attempt_in_round < schedule.max_attempts:
            next_attempt_at = now + timedelta(seconds=schedule.delay_s(attempt_in_round))
        self._delivery_failed(self.attempts + 1, error, permanent, next_attempt_at)
        if next_attempt_at is None:
            self._dead_lettered(error)

    def requeue(self, actor_id: str, actor_role: str, now: datetime) -> None:
        if self.state is not NotificationState.DEAD:
            raise Conflict(
                f"Only a dead letter can be retried; this notification is {self.state.value}.",
                code="not_dead_letter",
            )
        self._requeued(actor_id, actor_role, now)

    # --- events ------------------------------------------------------------------------------

    @event("NotificationCancelled")
    def _cancelled(self, reason: str) -> None:
        self.state = NotificationState.CANCELLED
        self.cancel_reason = reason

    @event("NotificationSent")
    def _sent(self, message_id: str, sent_at: datetime, attempt: int) -> None:
        self.state = NotificationState.SENT
        self.message_id = message_id
        self.sent_at = sent_at
        self.attempts = attempt

    @event("DeliveryFailed")
    def _delivery_failed(self, attempt: int, error: str, permanent: bool, next_attempt_at: datetime | None) -> None:
        self.attempts = attempt
        self.attempts_in_round += 1
        self.last_error = error
        if next_attempt_at is not None:
            self.state = NotificationState.FAILED
            self.due_at = next_attempt_at

    @event("NotificationDeadLettered")
    def _dead_lettered(self, last_error: str) -> None:
        self.state = NotificationState.DEAD

    @event("DeadLetterRequeued")
    def _requeued(self, actor_id: str, actor_role: str, due_at: datetime) -> None:
        self.state = NotificationState.SCHEDULED
        self.due_at = due_at
        self.attempts_in_round = 0


class Mirror(Aggregate):
    """A copy of an upstream aggregate; `seen_version` is the last upstream version applied."""

    seen_version: int

    def has_seen(self, upstream_version: int) -> bool:
        return upstream_version <= self.seen_version


class ProviderCard(Mirror):
    @staticmethod
    def id_for(provider_id: UUID) -> UUID:
        return uuid5(NAMESPACE, f"provider:{provider_id}")

    @event("Opened")
    def __init__(self, id: UUID, name: str, organization_id: str | None, seen_version: int) -> None:
        self.name = name
        self.organization_id = organization_id
        self.seen_version = seen_version

    @event("LinkedInPageNoted")
    def note_linkedin_page(self, organization_id: str, seen_version: int) -> None:
        self.organization_id = organization_id
        self.seen_version = seen_version


class ProductCard(Mirror):
    @staticmethod
    def id_for(product_id: UUID) -> UUID:
        return uuid5(NAMESPACE, f"product:{product_id}")

    @event("Opened")
    def __init__(self, id: UUID, title: str, seen_version: int) -> None:
        self.title = title
        self.seen_version = seen_version


class BookingFollowUp(Mirror):
    """What the reminder rules need to know about one booking."""

    @staticmethod
    def id_for(booking_id: UUID) -> UUID:
        return uuid5(NAMESPACE, f"booking:{booking_id}")

    @event("Opened")
    def __init__(
        self,
        id: UUID,
        booking_id: UUID,
        product_id: UUID,
        provider_id: UUID,
        participant: dict[str, str],
        seen_version: int,
    ) -> None:
        self.booking_id = booking_id
        self.product_id = product_id
        self.provider_id = provider_id
        self.participant = participant
        self.seen_version = seen_version
        self.closed = False
        self.status = "unknown"
        self.reviewed = False
        self.certificates: dict[str, dict[str, Any]] = {}
        self.active_certificate_id: str | None = None
        self.review_reminder_id: UUID | None = None

    # --- rules -------------------------------------------------------------------------------

    @property
    def valid_certificate(self) -> dict[str, Any] | None:
        """The certificate a LinkedIn invitation may point to: the active one, if still valid."""
        if self.active_certificate_id is None:
            return None
        certificate = self.certificates[self.active_certificate_id]
        return certificate if certificate["valid"] else None

    def wants_review_reminder(self, previous_reminder: NotificationState | None) -> bool:
        """On completion: unless already reviewed, or an earlier reminder was sent, is still
        waiting or is parked (a requeue would send it)."""
        if self.closed or self.reviewed:
            return False
        return previous_reminder in (None, NotificationState.CANCELLED)

    def notification_ids(self) -> Iterable[UUID]:
        """Every notification this booking may have: the review reminder and one invite per certificate."""
        if self.review_reminder_id is not None:
            yield self.review_reminder_id
        for certificate_id in self.certificates:
            yield notification_id(MessageKind.LINKEDIN_INVITE, linkedin_invite_cause(certificate_id))

    # --- events ------------------------------------------------------------------------------

    @event("Closed")
    def close(self, outcome: str, seen_version: int) -> None:
        self.closed = True
        self.seen_version = seen_version

    @event("StatusNoted")
    def note_status(self, status: str, review_reminder_id: UUID | None, seen_version: int) -> None:
        self.status = status
        self.review_reminder_id = review_reminder_id
        self.seen_version = seen_version

    @event("ReviewNoted")
    def note_review(self, seen_version: int) -> None:
        self.reviewed = True
        self.seen_version = seen_version

    @event("CertificateNoted")
    def note_certificate(
        self, certificate_id: str, certification_name: str, issued_at: datetime, seen_version: int
    ) -> None:
        if self.active_certificate_id is not None:
            self.certificates[self.active_certificate_id]["valid"] = False  # superseded
        self.certificates[certificate_id] = {
            "certificate_id": certificate_id,
            "certification_name": certification_name,
            "issued_at": issued_at,
            "valid": True,
        }
        self.active_certificate_id = certificate_id
        self.seen_version = seen_version

    @event("CertificateRevocationNoted")
    def note_revocation(self, certificate_id: str, seen_version: int) -> None:
        if certificate_id in self.certificates:
            self.certificates[certificate_id]["valid"] = False
        self.seen_version = seen_version
