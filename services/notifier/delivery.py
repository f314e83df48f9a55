"""Delivery of due notifications, and the worker that runs the whole notifier.

How often a mail goes out: the sender re-reads each notification from its events just before
sending (so a cancelled or already sent one is skipped) and records the outcome right after.
A crash after the mail server accepted a message but before `NotificationSent` is recorded leaves
the notification pending, and it is sent again after the restart: at most one duplicate per
crash, never more, and with the same Message-ID (derived from the notification id), by which mail
clients recognise the copy. Exactly one sender is active at a time (the worker's lease).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from uuid import UUID

import structlog
from eventsourcing.persistence import IntegrityError
from eventsourcing.projection import EventSourcedProjectionRunner

from services.booking.application import BookingApplication
from services.notifier.application import MAX_CONFLICT_RETRIES, NotifierProcess, ReminderTimings
from services.notifier.backoff import retry_delay
from services.notifier.domain import Notification, NotificationState, RetrySchedule
from services.notifier.mail import MailDeliveryError, Mailer, mailer_from_settings
from services.notifier.messages import MessageKind, OutgoingMessage, build_message
from services.notifier.projections import NOTIFICATION_LOG, NotificationLog
from services.notifier.settings import NotifierSettings
from shared.feed import TABLE_CREATION_LOCK, ProjectionSpec, SupervisedProjection, open_view
from shared.linkedin import add_to_profile_url

log = structlog.get_logger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


def compose_message(notification: Notification, settings: NotifierSettings) -> OutgoingMessage:
    """The mail for a notification: its recorded content, with links built from the settings."""
    content = notification.content
    linkedin_add_url = verify_url = None
    if notification.kind is MessageKind.LINKEDIN_INVITE:
        certificate_id = content["certificate_id"]
        verify_url = settings.verify_url(certificate_id)
        linkedin_add_url = add_to_profile_url(
            certification_name=content["certification_name"],
            organization_id=content["organization_id"] or None,
            organization_name=content["provider_name"],
            issued_at=datetime.fromisoformat(content["issued_at"]),
            cert_url=verify_url,
            cert_id=certificate_id,
        )
    return build_message(
        kind=notification.kind,
        notification_id=notification.id,
        locale=notification.locale,
        participant_name=notification.recipient["name"],
        participant_email=notification.recipient["email"],
        course_title=content["course_title"],
        provider_name=content["provider_name"],
        review_url=settings.review_url(notification.booking_id),
        linkedin_add_url=linkedin_add_url,
        verify_url=verify_url,
        mail_domain=settings.mail_domain,
    )


class NotificationSender:
    """Sends due notifications and records each outcome on the notification."""

    def __init__(
        self,
        *,
        process: NotifierProcess,
        log_view: NotificationLog,
        mailer: Mailer,
        settings: NotifierSettings,
    ) -> None:
        self._process = process
        self._log_view = log_view
        self._mailer = mailer
        self._settings = settings
        self._retry = RetrySchedule(
            max_attempts=settings.notifier_max_attempts,
            delay_s=partial(retry_delay, base_s=settings.notifier_retry_base_s, cap_s=settings.notifier_retry_cap_s),
        )

    def run_once(self, stop: threading.Event | None = None) -> int:
        """Delivers what is due now (one batch); with `stop` set, finishes the mail in flight and
        starts no other. Returns how many notifications were attempted."""
        attempted = 0
        for notification_id in self._log_view.due(utc_now(), self._settings.notifier_batch_size):
            if stop is not None and stop.is_set():
                break
            if self.deliver(notification_id) is not None:
                attempted += 1
        return attempted

    def deliver(self, notification_id: UUID) -> NotificationState | None:
        """Sends one notification if it is still due; None if it is not (the read model lagged)."""
        notification = self._process.get_notification(notification_id)
        if notification is None or not notification.is_due(utc_now()):
            return None
        try:
            message = compose_message(notification, self._settings)
        except (KeyError, ValueError) as error:
            # Its recorded content cannot make a mail: retrying cannot help, staff must look at it.
            return self._record_failure(notification_id, f"cannot compose the message: {error!r}", permanent=True)
        try:
            self._mailer.send(message, sender=self._settings.mail_from)
        except MailDeliveryError as error:
            return self._record_failure(notification_id, str(error), permanent=error.permanent)
        except Exception as error:  # an unforeseen failure must not block the queue behind this message
            log.exception("notification_send_crashed", notification_id=str(notification_id))
            return self._record_failure(notification_id, f"unexpected error: {error!r}", permanent=False)
        state = self._record(notification_id, lambda n: n.record_sent(message.message_id, utc_now()))
        log.info("notification_sent", notification_id=str(notification_id), kind=notification.kind.value)
        return state

    def _record_failure(self, notification_id: UUID, error: str, *, permanent: bool) -> NotificationState:
        state = self._record(
            notification_id,
            lambda n: n.record_failure(error, permanent=permanent, now=utc_now(), schedule=self._retry),
        )
        log.warning("notification_failed", notification_id=str(notification_id), error=error, state=state.value)
        return state

    def _record(self, notification_id: UUID, change: Callable[[Notification], None]) -> NotificationState:
        """Applies `change` on fresh state; the process may have written the notification meanwhile."""
        for attempt in range(1, MAX_CONFLICT_RETRIES + 1):
            notification = self._process.get_notification(notification_id)
            assert notification is not None
            change(notification)
            try:
                self._process.save(notification)
            except IntegrityError:
                if attempt == MAX_CONFLICT_RETRIES:
                    raise
            else:
                return notification.state
        raise AssertionError("unreachable")


# The process follows the booking application; the sender reads the notification log. The spec's
# view is the read model the sender depends on, the process itself keeps events of its own.
NOTIFIER_PROCESS = ProjectionSpec(NotifierProcess, NotificationLog, BookingApplication)  # type: ignore[arg-type]


class NotifierWorker(SupervisedProjection):
    """The notifier process (booking events → notifications) and the sender in one supervised
    loop: the lease keeps exactly one copy active, and errors (a cut subscription, a database
    outage) restart it. The notification log projection runs beside it (`NOTIFICATION_LOG`)."""

    def __init__(self, settings: NotifierSettings, *, restart_delay_s: float = 1.0) -> None:
        super().__init__(settings, NOTIFIER_PROCESS, restart_delay_s=restart_delay_s)
        self.notifier_settings = settings
        self.mailer = mailer_from_settings(
            smtp_host=settings.smtp_host,
            smtp_port=settings.smtp_port,
            smtp_tls=settings.smtp_tls,
            smtp_username=settings.smtp_username,
            smtp_password=settings.smtp_password.get_secret_value(),
            data_dir=settings.data_dir,
        )
        self._timings = ReminderTimings(
            review_reminder_delay=timedelta(seconds=settings.review_reminder_delay_s),
            linkedin_invite_delay=timedelta(seconds=settings.linkedin_invite_delay_s),
            max_cause_age=timedelta(seconds=settings.reminder_max_cause_age_s),
        )

    def run_once(self, env: dict[str, str], alive: Callable[[], bool]) -> None:
        settings = self.notifier_settings
        with TABLE_CREATION_LOCK:
            log_view = open_view(settings, NOTIFICATION_LOG)
        try:
            with TABLE_CREATION_LOCK:
                runner = EventSourcedProjectionRunner(
                    application_class=BookingApplication,
                    projection_class=NotifierProcess,
                    env=env | self._timings.as_env(NotifierProcess.name),
                )
            with runner:
                sender = NotificationSender(
                    process=runner.projection, log_view=log_view, mailer=self.mailer, settings=settings
                )
                self.running.set()
                while not self.stop_requested.is_set():
                    sender.run_once(self.stop_requested)
                    runner.run_forever(timeout=settings.notifier_poll_interval_s)
                    if runner.is_interrupted.is_set() or not alive():
                        msg = "the notifier lost its subscription or lease"
                        raise RuntimeError(msg)
        finally:
            log_view.datastore.close()
