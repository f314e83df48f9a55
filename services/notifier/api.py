"""HTTP API of the notifier: what was scheduled and sent for a booking, and dead-letter retries (staff)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel

from services.notifier.application import NotifierProcess
from services.notifier.domain import Notification, NotificationState
from services.notifier.messages import MessageKind
from services.notifier.projections import NotificationLog
from shared.auth import Principal
from shared.errors import Forbidden, NotFound
from shared.feed import read_your_writes
from shared.http import POSITION_HEADER, CurrentPrincipal, MinPosition


class NotificationOut(BaseModel):
    notification_id: UUID
    kind: MessageKind
    booking_id: UUID
    state: NotificationState
    recipient: str
    locale: str
    attempts: int
    last_error: str | None
    cancel_reason: str | None
    created_at: datetime
    due_at: datetime
    sent_at: datetime | None
    message_id: str | None

    @classmethod
    def of_row(cls, row: dict[str, Any]) -> NotificationOut:
        return cls(
            notification_id=row["notification_id"],
            kind=row["kind"],
            booking_id=row["booking_id"],
            state=row["state"],
            recipient=mask_address(row["recipient_email"]),
            locale=row["locale"],
            attempts=row["attempts"],
            last_error=row["last_error"],
            cancel_reason=row["cancel_reason"],
            created_at=row["created_at"],
            due_at=row["due_at"],
            sent_at=row["sent_at"],
            message_id=row["message_id"],
        )

    @classmethod
    def of(cls, notification: Notification) -> NotificationOut:
        return cls(
            notification_id=notification.id,
            kind=notification.kind,
            booking_id=notification.booking_id,
            state=notification.state,
            recipient=mask_address(notification.recipient["email"]),
            locale=notification.locale,
            attempts=notification.attempts,
            last_error=notification.last_error,
            cancel_reason=notification.cancel_reason,
            created_at=notification.created_on,
            due_at=notification.due_at,
            sent_at=notification.sent_at,
            message_id=notification.message_id,
        )


class NotificationPage(BaseModel):
    items: list[NotificationOut]
    next_cursor: str | None


def mask_address(address: str) -> str:
    """Enough to recognise an address, not to harvest it: "anna@example.se" -> "a***@example.se"."""
    local, at, domain = address.partition("@")
    return f"{local[:1]}***{at}{domain}"


def require_staff(principal: Principal) -> None:
    if not principal.is_staff:
        raise Forbidden("Notifications are visible to staff only.", code="staff_only")


def get_process(request: Request) -> NotifierProcess:
    return request.app.state.notifier_process  # type: ignore[no-any-return]


def get_log(request: Request) -> NotificationLog:
    return request.app.state.notification_log  # type: ignore[no-any-return]


Process = Annotated[NotifierProcess, Depends(get_process)]
Log = Annotated[NotificationLog, Depends(get_log)]

notifications = APIRouter(prefix="/v1/notifications", tags=["notifications"])


def wait_for_read_model(request: Request, log: NotificationLog, position: int | None) -> None:
    process: NotifierProcess = request.app.state.notifier_process
    read_your_writes(
        log, process.recorder, NotifierProcess.name, position, request.app.state.settings.read_your_writes_timeout_s
    )


@notifications.get("", response_model=NotificationPage, summary="Notifications, oldest first (staff)")
def list_notifications(
    request: Request,
    principal: CurrentPrincipal,
    log: Log,
    booking_id: UUID | None = None,
    state: NotificationState | None = None,
    kind: MessageKind | None = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    min_position: MinPosition = None,
) -> NotificationPage:
    require_staff(principal)
    wait_for_read_model(request, log, min_position)
    filters = {
        column: str(value)
        for column, value in (("booking_id", booking_id), ("state", state), ("kind", kind))
        if value is not None
    }
    rows, next_cursor = log.page(filters=filters, cursor=cursor, limit=limit)
    return NotificationPage(items=[NotificationOut.of_row(row) for row in rows], next_cursor=next_cursor)


@notifications.get("/{notification_id}", response_model=NotificationOut, summary="One notification (staff)")
def get_notification(
    request: Request, notification_id: UUID, principal: CurrentPrincipal, log: Log, min_position: MinPosition = None
) -> NotificationOut:
    require_staff(principal)
    wait_for_read_model(request, log, min_position)
    row = log.get(notification_id)
    if row is None:
        raise NotFound("No such notification.")
    return NotificationOut.of_row(row)


@notifications.post(
    "/{notification_id}/retry",
    response_model=NotificationOut,
    summary="Requeue a dead letter (staff)",
    responses={409: {"description": "the notification is not a dead letter"}},
)
def retry_dead_letter(
    notification_id: UUID, principal: CurrentPrincipal, process: Process, response: Response
) -> NotificationOut:
    require_staff(principal)
    notification, position = process.requeue_dead_letter(
        notification_id, actor_id=principal.sub, actor_role=principal.role.value
    )
    response.headers[POSITION_HEADER] = str(position)
    return NotificationOut.of(notification)
