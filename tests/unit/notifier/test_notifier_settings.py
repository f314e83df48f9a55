"""Notifier settings: read from the environment, wrong values refused at start-up with the variable named."""

from __future__ import annotations

from uuid import UUID

import pytest
from pydantic import ValidationError

from services.notifier.settings import NotifierSettings

BOOKING = UUID("0b6f3f0e-6a57-4f0b-9d3c-2f1f8c1e5a01")


def test_the_environment_configures_mail_links_and_timings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAIL_FROM", "Kursuppföljning <no-reply@mail.example.se>")
    monkeypatch.setenv("REVIEW_URL_TEMPLATE", "https://www.example.se/bokningar/{booking_id}/recension")
    monkeypatch.setenv("CERTIFICATE_URL", "https://intyg.example.se/")
    monkeypatch.setenv("REVIEW_REMINDER_DELAY_S", "0")
    monkeypatch.setenv("NOTIFIER_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("SMTP_TLS", "starttls")
    settings = NotifierSettings()

    assert settings.mail_domain == "mail.example.se"
    assert settings.review_url(BOOKING) == f"https://www.example.se/bokningar/{BOOKING}/recension"
    assert settings.verify_url("c1") == "https://intyg.example.se/verify/c1"
    assert (settings.review_reminder_delay_s, settings.notifier_max_attempts, settings.smtp_tls) == (0, 3, "starttls")


def test_without_a_review_page_the_link_points_at_the_booking_service() -> None:
    settings = NotifierSettings(booking_url="http://127.0.0.1:8001/")
    assert settings.review_url(BOOKING) == f"http://127.0.0.1:8001/v1/bookings/{BOOKING}/review"
    assert settings.review_reminder_delay_s == 300


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("mail_from", "no domain at all", "mail_from"),
        ("mail_from", "Kurs <no-reply@under_score.se>", "mail_from"),
        ("review_url_template", "https://www.example.se/recension", "booking_id"),
        ("review_url_template", "ftp://www.example.se/{booking_id}", "http"),
        ("smtp_tls", "ssl", "smtp_tls"),
        ("review_reminder_delay_s", -1, "review_reminder_delay_s"),
        ("reminder_max_cause_age_s", 0, "reminder_max_cause_age_s"),
    ],
)
def test_wrong_values_are_refused(field: str, value: object, named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        NotifierSettings(**{field: value})
