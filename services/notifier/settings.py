"""Settings of the notifier service (environment variables; see README)."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import Field, SecretStr, field_validator, model_validator

from services.notifier.application import DEFAULT_MAX_CAUSE_AGE, DEFAULT_REVIEW_REMINDER_DELAY
from services.notifier.backoff import MAX_ATTEMPTS
from services.notifier.mail import sender_domain
from services.notifier.messages import message_id_for
from shared.settings import ServiceSettings

BOOKING_ID_PLACEHOLDER = "{booking_id}"


class NotifierSettings(ServiceSettings):
    host: str = "127.0.0.1"
    notifier_port: int = Field(default=8003, ge=1, le=65535)

    smtp_host: str = ""
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_tls: Literal["none", "starttls", "tls"] = "none"
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    mail_from: str = "Course follow-up <no-reply@localhost>"

    review_url_template: str = ""
    """Where a participant writes a review; `{booking_id}` is replaced. Empty: the booking service's
    review endpoint under BOOKING_URL (a front end should set its own page here)."""
    review_reminder_delay_s: float = Field(default=DEFAULT_REVIEW_REMINDER_DELAY.total_seconds(), ge=0)
    """Grace period after `completed` before the review reminder goes out (a mistaken status can be corrected)."""
    linkedin_invite_delay_s: float = Field(default=0.0, ge=0)
    reminder_max_cause_age_s: float = Field(default=DEFAULT_MAX_CAUSE_AGE.total_seconds(), gt=0)
    """A reminder whose cause the notifier learns of later than this after it is recorded cancelled, not sent."""

    notifier_poll_interval_s: float = Field(default=1.0, gt=0)
    notifier_batch_size: int = Field(default=20, ge=1, le=1000)
    notifier_retry_base_s: float = Field(default=30.0, ge=0)
    notifier_retry_cap_s: float = Field(default=3600.0, ge=0)
    notifier_max_attempts: int = Field(default=MAX_ATTEMPTS, ge=1)

    @field_validator("mail_from")
    @classmethod
    def _sender_has_a_domain(cls, value: str) -> str:
        # The Message-ID of every mail is <notification id @ this domain>.
        message_id_for(UUID(int=0), sender_domain(value))
        return value

    @model_validator(mode="after")
    def _review_url_names_the_booking(self) -> NotifierSettings:
        if self.review_url_template and BOOKING_ID_PLACEHOLDER not in self.review_url_template:
            msg = f"REVIEW_URL_TEMPLATE must contain {BOOKING_ID_PLACEHOLDER}"
            raise ValueError(msg)
        if not self.review_url(UUID(int=0)).startswith(("http://", "https://")):
            msg = "REVIEW_URL_TEMPLATE (or BOOKING_URL) must be an http(s) URL"
            raise ValueError(msg)
        return self

    @property
    def mail_domain(self) -> str:
        return sender_domain(self.mail_from)

    def review_url(self, booking_id: UUID) -> str:
        template = (
            self.review_url_template or f"{self.booking_url.rstrip('/')}/v1/bookings/{BOOKING_ID_PLACEHOLDER}/review"
        )
        return template.replace(BOOKING_ID_PLACEHOLDER, str(booking_id))

    def verify_url(self, certificate_id: str) -> str:
        return f"{self.certificate_url.rstrip('/')}/verify/{certificate_id}"
