"""The notifier process: follows the booking service's events and decides which reminders to send.

`NotifierProcess` is an event-sourced projection of the booking application: for each booking
event, its policy updates the notifier's own aggregates (mirrors of bookings, providers and
products; notifications) and the library records their new events together with the position of
the booking event in one transaction. So each booking event is handled exactly once: a restart
continues after the last recorded position, and a replay (positions forgotten) meets mirrors that
have already seen the event and notification ids that already exist, and schedules nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, ProcessingEvent
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import IntegrityError, Tracking
from eventsourcing.projection import EventSourcedProjection
from eventsourcing.utils import Environment, EnvType

from services.booking.domain import Booking, Product, Provider, Status
from services.notifier.domain import (
    BookingFollowUp,
    Mirror,
    Notification,
    NotificationState,
    ProductCard,
    ProviderCard,
    linkedin_invite_cause,
    notification_id,
    review_reminder_cause,
)
from services.notifier.messages import MessageKind
from shared.errors import Conflict, NotFound

# Both the process and the sender write notifications; a conflict means "re-run on fresh state".
MAX_CONFLICT_RETRIES = 5

MirrorT = TypeVar("MirrorT", bound=Mirror)

# A provider who set `completed` by mistake has this long to correct it before the reminder goes out.
DEFAULT_REVIEW_REMINDER_DELAY = timedelta(minutes=5)
# A reminder is worth sending while its cause is recent. A notifier first started on an existing
# history, or back after a long outage, learns of old causes: their notifications are recorded
# cancelled (staff see why), not sent.
DEFAULT_MAX_CAUSE_AGE = timedelta(days=14)
TOO_LATE = "the notifier learned of its cause too late (more than REMINDER_MAX_CAUSE_AGE_S after it)"


@dataclass(frozen=True)
class ReminderTimings:
    """How long after its cause each kind of reminder goes out, and how old a cause may be."""

    review_reminder_delay: timedelta = DEFAULT_REVIEW_REMINDER_DELAY
    linkedin_invite_delay: timedelta = timedelta(0)
    max_cause_age: timedelta = DEFAULT_MAX_CAUSE_AGE

    # Each field's variable in the application's environment, in seconds.
    ENV_KEYS: ClassVar[dict[str, str]] = {
        "review_reminder_delay": "REVIEW_REMINDER_DELAY_S",
        "linkedin_invite_delay": "LINKEDIN_INVITE_DELAY_S",
        "max_cause_age": "REMINDER_MAX_CAUSE_AGE_S",
    }

    @classmethod
    def from_env(cls, env: Environment) -> ReminderTimings:
        given = {field: env.get(key) for field, key in cls.ENV_KEYS.items()}
        return cls(**{field: timedelta(seconds=float(raw)) for field, raw in given.items() if raw})

    def as_env(self, application_name: str) -> dict[str, str]:
        """Prefixed with the application's name, so that they win over unprefixed variables."""
        return {
            f"{application_name.upper()}_{key}": str(getattr(self, field).total_seconds())
            for field, key in self.ENV_KEYS.items()
        }


class NotifierProcess(EventSourcedProjection[UUID]):
    name = "notifier"

    def __init__(self, env: EnvType | None = None) -> None:
        super().__init__(env)
        self.timings = ReminderTimings.from_env(self.env)

    def process_event(self, domain_event: DomainEventProtocol[UUID], tracking: Tracking) -> None:
        """The sender may record a send while the policy cancels the same notification: the
        later save fails, and the policy runs again on fresh state."""
        for attempt in range(1, MAX_CONFLICT_RETRIES + 1):
            try:
                super().process_event(domain_event, tracking)
            except IntegrityError:
                if attempt == MAX_CONFLICT_RETRIES:
                    raise
            else:
                return

    def get_notification(self, notification_id: UUID) -> Notification | None:
        return self._find(notification_id, Notification)

    def requeue_dead_letter(self, notification_id: UUID, *, actor_id: str, actor_role: str) -> tuple[Notification, int]:
        """Puts a dead letter back in the queue, due now; returns it and the position of the event."""
        notification = self.get_notification(notification_id)
        if notification is None:
            raise NotFound("No such notification.")
        notification.requeue(actor_id, actor_role, datetime.now(UTC))
        try:
            recordings = self.save(notification)
        except IntegrityError:
            raise Conflict("This notification is being retried already.", code="concurrent_update") from None
        return notification, recordings[-1].notification.id

    # --- policy ------------------------------------------------------------------------------

    @singledispatchmethod
    def policy(self, domain_event: DomainEventProtocol[UUID], processing_event: ProcessingEvent[UUID]) -> None:
        """Events that need no follow-up (consent, visibility, ...) only advance the position."""

    @policy.register(Provider.ProviderRegistered)
    def _provider_registered(self, event: Any, processing: ProcessingEvent[UUID]) -> None:
        card_id = ProviderCard.id_for(event.originator_id)
        if self._find(card_id, ProviderCard) is None:
            processing.collect_events(
                ProviderCard(
                    id=card_id,
                    name=event.name,
                    organization_id=event.linkedin_organization_id,
                    seen_version=event.originator_version,
                )
            )

    @policy.register(Provider.LinkedInPageLinked)
    def _linkedin_page_linked(self, event: Any, processing: ProcessingEvent[UUID]) -> None:
        card = self._unseen_mirror(ProviderCard.id_for(event.originator_id), ProviderCard, event)
        if card is not None:
            card.note_linkedin_page(event.organization_id, event.originator_version)
            processing.collect_events(card)

    @policy.register(Product.ProductRegistered)
    def _product_registered(self, event: Any, processing: ProcessingEvent[UUID]) -> None:
        card_id = ProductCard.id_for(event.originator_id)
        if self._find(card_id, ProductCard) is None:
            processing.collect_events(ProductCard(id=card_id, title=event.title, seen_version=event.originator_version))

    @policy.register(Booking.BookingRequested)
    def _booking_requested(self, event: Any, processing: ProcessingEvent[UUID]) -> None:
        follow_up_id = BookingFollowUp.id_for(event.originator_id)
        if self._find(follow_up_id, BookingFollowUp) is None:
            processing.collect_events(
                BookingFollowUp(
                    id=follow_up_id,
                    booking_id=event.originator_id,
                    product_id=event.product_id,
                    provider_id=event.provider_id,
                    participant=event.participant,
                    seen_version=event.originator_version,
                )
            )

    @policy.register(Booking.Declined)
    @policy.register(Booking.Cancelled)
    def _booking_closed(self, event: Any, processing: ProcessingEvent[UUID]) -> None:
        follow_up = self._follow_up(event)
        if follow_up is None:
            return
        outcome = "declined" if isinstance(event, Booking.Declined) else "cancelled"
        self._cancel(processing, follow_up.notification_ids(), f"the booking was {outcome}")
        follow_up.close(outcome, event.originator_version)
        processing.collect_events(follow_up)

    @policy.register(Booking.StatusChanged)
    def _status_changed(self, event: Any, processing: ProcessingEvent[UUID]) -> None:
        follow_up = self._follow_up(event)
        if follow_up is None:
            return
        reminder_id = follow_up.review_reminder_id
        if event.old_status == Status.COMPLETED and reminder_id is not None:
            reason = f"the participation status changed from completed to {event.new_status} before it was sent"
            self._cancel(processing, [reminder_id], reason)
        if event.new_status == Status.COMPLETED and follow_up.wants_review_reminder(self._state_of(reminder_id)):
            reminder_id = self._schedule(
                processing,
                follow_up,
                MessageKind.REVIEW_REMINDER,
                cause=review_reminder_cause(follow_up.booking_id, event.originator_version),
                caused_at=event.timestamp,
                delay=self.timings.review_reminder_delay,
                content=self._course(follow_up),
            )
        follow_up.note_status(event.new_status, reminder_id, event.originator_version)
        processing.collect_events(follow_up)

    @policy.register(Booking.ReviewSubmitted)
    def _review_submitted(self, event: Any, processing: ProcessingEvent[UUID]) -> None:
        follow_up = self._follow_up(event)
        if follow_up is None:
            return
        follow_up.note_review(event.originator_version)
        self._invite_to_linkedin(processing, follow_up, event.timestamp)
        processing.collect_events(follow_up)

    @policy.register(Booking.CertificateUploaded)
    def _certificate_uploaded(self, event: Any, processing: ProcessingEvent[UUID]) -> None:
        follow_up = self._follow_up(event)
        if follow_up is None:
            return
        if event.supersedes is not None:
            superseded = self._linkedin_invite_id(str(event.supersedes))
            self._cancel(processing, [superseded], "the certificate was superseded by a newer one")
        follow_up.note_certificate(
            str(event.certificate_id), event.certification_name, event.issued_at, event.originator_version
        )
        if follow_up.reviewed:
            self._invite_to_linkedin(processing, follow_up, event.timestamp)
        processing.collect_events(follow_up)

    @policy.register(Booking.CertificateRevoked)
    def _certificate_revoked(self, event: Any, processing: ProcessingEvent[UUID]) -> None:
        follow_up = self._follow_up(event)
        if follow_up is None:
            return
        certificate_id = str(event.certificate_id)
        self._cancel(
            processing, [self._linkedin_invite_id(certificate_id)], f"the certificate was revoked: {event.reason}"
        )
        follow_up.note_revocation(certificate_id, event.originator_version)
        processing.collect_events(follow_up)

    # --- helpers -----------------------------------------------------------------------------

    def _invite_to_linkedin(self, processing: ProcessingEvent[UUID], follow_up: BookingFollowUp, at: datetime) -> None:
        certificate = follow_up.valid_certificate
        if certificate is None:
            return
        provider = self._get(ProviderCard.id_for(follow_up.provider_id), ProviderCard)
        self._schedule(
            processing,
            follow_up,
            MessageKind.LINKEDIN_INVITE,
            cause=linkedin_invite_cause(certificate["certificate_id"]),
            caused_at=at,
            delay=self.timings.linkedin_invite_delay,
            content={
                **self._course(follow_up),
                "certificate_id": certificate["certificate_id"],
                "certification_name": certificate["certification_name"],
                "issued_at": certificate["issued_at"].isoformat(),
                "organization_id": provider.organization_id or "",
            },
        )

    def _schedule(
        self,
        processing: ProcessingEvent[UUID],
        follow_up: BookingFollowUp,
        kind: MessageKind,
        *,
        cause: str,
        caused_at: datetime,
        delay: timedelta,
        content: dict[str, str],
    ) -> UUID:
        """Schedules the notification for this cause `delay` after it, unless the cause was met
        before; one learned of too late is recorded cancelled."""
        new_id = notification_id(kind, cause)
        if self._find(new_id, Notification) is None:
            participant = follow_up.participant
            notification = Notification(
                id=new_id,
                kind=kind.value,
                cause=cause,
                booking_id=follow_up.booking_id,
                recipient={"name": participant["name"], "email": participant["email"]},
                locale=participant.get("locale", "en"),
                content=content,
                not_before=caused_at + delay,
            )
            if datetime.now(UTC) - caused_at > self.timings.max_cause_age:
                notification.cancel(TOO_LATE)
            processing.collect_events(notification)
        return new_id

    def _cancel(self, processing: ProcessingEvent[UUID], notification_ids: Iterable[UUID], reason: str) -> None:
        for pending_id in notification_ids:
            notification = self._find(pending_id, Notification)
            if notification is not None and notification.cancel(reason):
                processing.collect_events(notification)

    def _course(self, follow_up: BookingFollowUp) -> dict[str, str]:
        product = self._get(ProductCard.id_for(follow_up.product_id), ProductCard)
        provider = self._get(ProviderCard.id_for(follow_up.provider_id), ProviderCard)
        return {"course_title": product.title, "provider_name": provider.name}

    @staticmethod
    def _linkedin_invite_id(certificate_id: str) -> UUID:
        return notification_id(MessageKind.LINKEDIN_INVITE, linkedin_invite_cause(certificate_id))

    def _state_of(self, maybe_id: UUID | None) -> NotificationState | None:
        notification = self._find(maybe_id, Notification) if maybe_id is not None else None
        return notification.state if notification is not None else None

    def _follow_up(self, event: Any) -> BookingFollowUp | None:
        return self._unseen_mirror(BookingFollowUp.id_for(event.originator_id), BookingFollowUp, event)

    def _unseen_mirror(self, mirror_id: UUID, cls: type[MirrorT], event: Any) -> MirrorT | None:
        """The mirror to update, or None when it has applied this event already (a replay)."""
        mirror = self._find(mirror_id, cls)
        if mirror is None or mirror.has_seen(event.originator_version):
            return None
        return mirror

    def _find(self, aggregate_id: UUID, cls: type[Any]) -> Any:
        try:
            aggregate: Any = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        return aggregate if isinstance(aggregate, cls) else None

    def _get(self, aggregate_id: UUID, cls: type[Any]) -> Any:
        """Catalog cards always precede the bookings that need them in the booking event order."""
        aggregate = self._find(aggregate_id, cls)
        if aggregate is None:
            msg = f"the notifier has no {cls.__name__} {aggregate_id}: booking events were skipped"
            raise LookupError(msg)
        return aggregate
