"""Read model of the notifier: one row per notification, from the notifier's own events.

It serves the staff API, the sender's "what is due" query and the queue metrics. It may lag the
events by a moment: the sender re-checks each notification on its aggregate before sending.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Tracking
from eventsourcing.projection import Projection

from services.booking.projections import decode_cursor, encode_cursor, iso
from services.notifier.application import NotifierProcess
from services.notifier.domain import Notification, NotificationState
from shared.feed import ProjectionSpec
from shared.views import SqlView


class NotificationLog(SqlView):
    tables = (
        "CREATE TABLE IF NOT EXISTS notification_log ("
        " notification_id TEXT PRIMARY KEY, kind TEXT NOT NULL, booking_id TEXT NOT NULL,"
        " recipient_email TEXT NOT NULL, locale TEXT NOT NULL, state TEXT NOT NULL,"
        " attempts INTEGER NOT NULL, failures INTEGER NOT NULL, last_error TEXT, cancel_reason TEXT,"
        " due_at TEXT NOT NULL, created_at TEXT NOT NULL, sent_at TEXT, message_id TEXT,"
        " version INTEGER NOT NULL)",
        "CREATE INDEX IF NOT EXISTS notification_log_due ON notification_log (state, due_at)",
        "CREATE INDEX IF NOT EXISTS notification_log_booking ON notification_log (booking_id, created_at)",
        "CREATE INDEX IF NOT EXISTS notification_log_order ON notification_log (created_at, notification_id)",
    )
    table_names = ("notification_log",)

    def insert(self, tracking: Tracking, row: dict[str, Any]) -> None:
        columns = ", ".join(row)
        values = ", ".join(f":{c}" for c in row)
        self.record(
            tracking,
            lambda cur: self.execute(
                cur, f"INSERT INTO notification_log ({columns}) VALUES ({values}) ON CONFLICT DO NOTHING", row
            ),
        )

    def update(self, tracking: Tracking, notification_id: str, version: int, assignments: str, **params: Any) -> None:
        """`assignments` is SQL over the row's own columns, e.g. "attempts = attempts + 1"."""
        self.record(
            tracking,
            lambda cur: self.execute(
                cur,
                f"UPDATE notification_log SET {assignments}, version = :version "
                "WHERE notification_id = :notification_id AND version < :version",
                {**params, "notification_id": notification_id, "version": version},
            ),
        )

    # --- queries -----------------------------------------------------------------------------

    def get(self, notification_id: UUID) -> dict[str, Any] | None:
        return self.fetch_one(
            "SELECT * FROM notification_log WHERE notification_id = :id", {"id": str(notification_id)}
        )

    def due(self, now: datetime, limit: int) -> list[UUID]:
        rows = self.fetch_all(
            "SELECT notification_id FROM notification_log WHERE state IN (:scheduled, :failed) AND due_at <= :now "
            "ORDER BY due_at LIMIT :limit",
            {
                "scheduled": NotificationState.SCHEDULED.value,
                "failed": NotificationState.FAILED.value,
                "now": iso(now),
                "limit": limit,
            },
        )
        return [UUID(row["notification_id"]) for row in rows]

    def dead_letters(self) -> list[UUID]:
        rows = self.fetch_all(
            "SELECT notification_id FROM notification_log WHERE state = :dead ORDER BY created_at",
            {"dead": NotificationState.DEAD.value},
        )
        return [UUID(row["notification_id"]) for row in rows]

    def page(
        self, *, filters: dict[str, str], cursor: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Keyset pagination in (created_at, notification_id) order."""
        clauses = [f"{column} = :{column}" for column in filters]
        params: dict[str, Any] = dict(filters)
        if cursor:
            after_time, after_id = decode_cursor(cursor, 2)
            clauses.append("(created_at > :after_time OR (created_at = :after_time AND notification_id > :after_id))")
            params |= {"after_time": after_time, "after_id": after_id}
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.fetch_all(
            f"SELECT * FROM notification_log {where} ORDER BY created_at, notification_id LIMIT :limit",
            params | {"limit": limit + 1},
        )
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["notification_id"])
        return rows, next_cursor

    def queue_statistics(self) -> dict[str, Any]:
        """For the metrics: totals and the state of the queue."""
        row = self.fetch_one(
            "SELECT"
            " COALESCE(SUM(CASE WHEN state = :sent THEN 1 ELSE 0 END), 0) AS sent,"
            " COALESCE(SUM(failures), 0) AS failures,"
            " COALESCE(SUM(CASE WHEN state = :dead THEN 1 ELSE 0 END), 0) AS dead,"
            " COALESCE(SUM(CASE WHEN state IN (:scheduled, :failed) THEN 1 ELSE 0 END), 0) AS pending,"
            " MIN(CASE WHEN state IN (:scheduled, :failed) THEN due_at END) AS oldest_due_at"
            " FROM notification_log",
            {
                "sent": NotificationState.SENT.value,
                "dead": NotificationState.DEAD.value,
                "failed": NotificationState.FAILED.value,
                "scheduled": NotificationState.SCHEDULED.value,
            },
        )
        assert row is not None
        return row


class NotificationLogProjection(Projection[NotificationLog]):
    name = "notification_log"

    @singledispatchmethod
    def process_event(self, domain_event: DomainEventProtocol[UUID], tracking: Tracking) -> None:
        """The notifier's mirrors of bookings and the catalog are not listed: position only."""
        self.view.record(tracking)

    @process_event.register(Notification.NotificationScheduled)
    def _scheduled(self, event: Any, tracking: Tracking) -> None:
        self.view.insert(
            tracking,
            {
                "notification_id": str(event.originator_id),
                "kind": event.kind,
                "booking_id": str(event.booking_id),
                "recipient_email": event.recipient["email"],
                "locale": event.locale,
                "state": NotificationState.SCHEDULED.value,
                "attempts": 0,
                "failures": 0,
                "due_at": iso(event.not_before),
                "created_at": iso(event.timestamp),
                "version": event.originator_version,
            },
        )

    def _update(self, event: Any, tracking: Tracking, assignments: str, **params: Any) -> None:
        self.view.update(tracking, str(event.originator_id), event.originator_version, assignments, **params)

    @process_event.register(Notification.DeliveryFailed)
    def _failed(self, event: Any, tracking: Tracking) -> None:
        # With no next attempt the notification is dead-lettered by the next event: keep due_at.
        self._update(
            event,
            tracking,
            "state = :state, attempts = :attempt, failures = failures + 1, last_error = :error,"
            " due_at = COALESCE(:due_at, due_at)",
            state=NotificationState.FAILED.value,
            attempt=event.attempt,
            error=event.error,
            due_at=iso(event.next_attempt_at) if event.next_attempt_at else None,
        )

    @process_event.register(Notification.NotificationDeadLettered)
    def _dead(self, event: Any, tracking: Tracking) -> None:
        self._update(event, tracking, "state = :state", state=NotificationState.DEAD.value)

    @process_event.register(Notification.DeadLetterRequeued)
    def _requeued(self, event: Any, tracking: Tracking) -> None:
        self._update(
            event,
            tracking,
            "state = :state, due_at = :due_at",
            state=NotificationState.SCHEDULED.value,
            due_at=iso(event.due_at),
        )

    @process_event.register(Notification.NotificationSent)
    def _sent(self, event: Any, tracking: Tracking) -> None:
        self._update(
            event,
            tracking,
            "state = :state, attempts = :attempt, sent_at = :sent_at, message_id = :message_id",
            state=NotificationState.SENT.value,
            attempt=event.attempt,
            sent_at=iso(event.sent_at),
            message_id=event.message_id,
        )

    @process_event.register(Notification.NotificationCancelled)
    def _cancelled(self, event: Any, tracking: Tracking) -> None:
        self._update(
            event,
            tracking,
            "state = :state, cancel_reason = :reason",
            state=NotificationState.CANCELLED.value,
            reason=event.reason,
        )


NOTIFICATION_LOG = ProjectionSpec(NotificationLogProjection, NotificationLog, NotifierProcess)
