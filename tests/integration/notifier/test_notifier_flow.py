"""The notifier's rules end to end: booking service events in, mail out over real SMTP (aiosmtpd), on both stores.

Every test counts the messages the SMTP server received once the notifier is idle (every booking
event handled, nothing due): a second mail for the same cause would be counted.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.booking.settings import BookingSettings
from services.notifier.application import TOO_LATE
from services.notifier.domain import NotificationState, notification_id
from services.notifier.main import create_app as create_notifier_app
from services.notifier.messages import MessageKind
from services.notifier.settings import NotifierSettings
from tests.fixtures.booking_flows import BookingFlows
from tests.fixtures.notifier import PATIENCE_S, NotifierFlow, NotifierProbe, linkedin_links, messages_to, text_of
from tests.fixtures.smtp import SmtpTestServer


@pytest.fixture
def booking_settings(service_env: dict[str, Any]) -> BookingSettings:
    """The notifier reads the booking events, not the booking read models: no booking workers, small pools."""
    return BookingSettings(**service_env | {"db_pool_size": 1, "run_workers": False})


def test_a_completed_booking_gets_one_review_reminder_in_the_participants_language(
    notifier_flow: NotifierFlow, smtp_server: SmtpTestServer
) -> None:
    flow = notifier_flow
    swedish = flow.completed("sara", locale="sv")
    english = flow.completed("emma", locale="en")

    smtp_server.wait_for(2, timeout=PATIENCE_S)
    flow.probe.settle()

    assert len(smtp_server.received) == 2
    (sv_mail,) = messages_to(smtp_server, "sara")
    (en_mail,) = messages_to(smtp_server, "emma")
    assert sv_mail["Subject"] == "Vad tyckte du om Projektledning?"
    assert en_mail["Subject"] == "What did you think of Projektledning?"
    assert f"/v1/bookings/{swedish}/review" in text_of(sv_mail)
    for booking_id, mail, masked in ((swedish, sv_mail, "s***@example.se"), (english, en_mail, "e***@example.se")):
        (listed,) = flow.listed(booking_id)
        assert (listed["kind"], listed["state"], listed["attempts"], listed["recipient"]) == (
            "review_reminder",
            "sent",
            1,
            masked,
        )
        assert listed["message_id"] == mail["Message-ID"] == f"<{listed['notification_id']}@localhost>"
        assert not linkedin_links(mail), "the reminder invites to LinkedIn only after the review"


def test_a_review_with_a_valid_certificate_sends_the_add_to_linkedin_link(
    notifier_flow: NotifierFlow, smtp_server: SmtpTestServer
) -> None:
    flow = notifier_flow
    booking_id = flow.completed("anna")
    certificate_id = flow.upload_certificate(booking_id)
    review = flow.review(booking_id, "anna")

    invite = flow.wait_for(booking_id, MessageKind.LINKEDIN_INVITE, "sent")
    flow.probe.settle()

    assert len(smtp_server.received) == 2  # the review reminder and the invitation
    (mail,) = [m for m in smtp_server.messages if m["Message-ID"] == invite["message_id"]]
    assert mail["Subject"] == "Lägg till ditt certifikat för Projektledning på LinkedIn"
    link = review["linkedin_add_url"]
    assert link is not None and "organizationId=1337" in link
    assert f"certUrl=http%3A%2F%2F127.0.0.1%3A8002%2Fverify%2F{certificate_id}" in link
    assert linkedin_links(mail) == [link]
    html = mail.get_body(preferencelist=("html",))
    assert html is not None
    assert f'href="{link.replace("&", "&amp;")}"' in str(html.get_content())


def test_a_certificate_uploaded_after_the_review_sends_the_invitation(
    notifier_flow: NotifierFlow, smtp_server: SmtpTestServer
) -> None:
    flow = notifier_flow
    booking_id = flow.completed("anna")
    flow.review(booking_id, "anna")
    flow.wait_for(booking_id, MessageKind.REVIEW_REMINDER, "sent")
    certificate_id = flow.upload_certificate(booking_id)

    invite = flow.wait_for(booking_id, MessageKind.LINKEDIN_INVITE, "sent")
    flow.probe.settle()

    assert invite["notification_id"] == str(
        notification_id(MessageKind.LINKEDIN_INVITE, f"certificate:{certificate_id}")
    )
    assert len(smtp_server.received) == 2
    (mail,) = [m for m in smtp_server.messages if m["Message-ID"] == invite["message_id"]]
    (link,) = linkedin_links(mail)
    assert f"certId={certificate_id}" in link


def test_revoked_and_superseded_certificates_get_no_invitation(
    notifier_flow: NotifierFlow, smtp_server: SmtpTestServer
) -> None:
    flow = notifier_flow
    revoked_only = flow.completed("rita")
    revoked = flow.upload_certificate(revoked_only)
    flow.revoke(revoked_only, revoked)
    flow.review(revoked_only, "rita")

    superseded_then_revoked = flow.completed("sune")
    superseded = flow.upload_certificate(superseded_then_revoked)
    newest = flow.upload_certificate(superseded_then_revoked)
    flow.revoke(superseded_then_revoked, newest)
    flow.review(superseded_then_revoked, "sune")

    smtp_server.wait_for(2, timeout=PATIENCE_S)
    flow.probe.settle()

    assert len(smtp_server.received) == 2
    assert [n["kind"] for n in flow.listed(revoked_only) + flow.listed(superseded_then_revoked)] == [
        "review_reminder"
    ] * 2
    texts = [text_of(m) for m in smtp_server.messages]
    assert not [cid for cid in (revoked, superseded, newest) for text in texts if cid in text]


def test_reminders_whose_cause_went_away_are_cancelled_and_never_sent(
    bookings: BookingFlows, notifier_env: dict[str, Any], smtp_server: SmtpTestServer
) -> None:
    # The review reminder waits 1 s: the provider corrects the status (or the booking ends) first.
    settings = NotifierSettings(
        **notifier_env | {"review_reminder_delay_s": 1.0}, smtp_host=smtp_server.host, smtp_port=smtp_server.port
    )
    with NotifierProbe(settings) as probe, TestClient(create_notifier_app(settings)) as notifier:
        flow = NotifierFlow(bookings, probe, notifier)
        probe.settle()  # the notifier follows the booking events live, so each correction lands well in time
        corrected = flow.completed("carl")
        flow.status(corrected, "started")
        cancelled = flow.completed("cecilia")
        cancel = flow.client.post(f"/v1/bookings/{cancelled}/cancel", json={"reason": "ombokad"}, headers=flow.staff)
        assert cancel.status_code == 200, cancel.text
        declined = flow.requested("dan")
        decline = flow.client.post(
            f"/v1/bookings/{declined}/decline", json={"reason": "fullbokat"}, headers=bookings.provider
        )
        assert decline.status_code == 200, decline.text
        kept = flow.completed("karin")  # completed last, so due last: once it is sent, all were due

        flow.wait_for(kept, MessageKind.REVIEW_REMINDER, "sent")
        probe.settle()

        assert len(smtp_server.received) == 1
        assert messages_to(smtp_server, "karin")
        (corrected_reminder,) = flow.listed(corrected)
        assert corrected_reminder["state"] == "cancelled"
        assert "from completed to started" in corrected_reminder["cancel_reason"]
        (cancelled_reminder,) = flow.listed(cancelled)
        assert (cancelled_reminder["state"], cancelled_reminder["cancel_reason"]) == (
            "cancelled",
            "the booking was cancelled",
        )
        assert flow.listed(declined) == []


def test_a_notifier_started_on_an_old_history_mails_no_one_about_it(
    bookings: BookingFlows, notifier_env: dict[str, Any], smtp_server: SmtpTestServer
) -> None:
    """Causes older than REMINDER_MAX_CAUSE_AGE_S when the notifier learns of them are recorded cancelled."""
    max_age_s = 1.0
    settings = NotifierSettings(
        **notifier_env | {"reminder_max_cause_age_s": max_age_s}, smtp_host=smtp_server.host, smtp_port=smtp_server.port
    )
    with NotifierProbe(settings) as probe:
        history = NotifierFlow(bookings, probe)
        old = history.completed("olle")  # before the notifier ever ran
        reviewed = history.completed("rut")
        certificate_id = history.upload_certificate(reviewed)
        history.review(reviewed, "rut")
        time.sleep(max_age_s + 0.2)

        with TestClient(create_notifier_app(settings)) as notifier:
            flow = NotifierFlow(bookings, probe, notifier)
            probe.settle()
            live = flow.completed("lena")  # learned of at once
            flow.wait_for(live, MessageKind.REVIEW_REMINDER, "sent")
            probe.settle()

            assert [message["To"] for message in smtp_server.messages] == ["Lena Svensson <lena@example.se>"]
            (reminder,) = flow.listed(old)
            assert (reminder["kind"], reminder["state"], reminder["cancel_reason"]) == (
                "review_reminder", "cancelled", TOO_LATE,
            )  # fmt: skip
            assert {(n["kind"], n["state"]) for n in flow.listed(reviewed)} == {
                ("review_reminder", "cancelled"), ("linkedin_invite", "cancelled"),
            }  # fmt: skip
            invite = probe.notification(notification_id(MessageKind.LINKEDIN_INVITE, f"certificate:{certificate_id}"))
            assert invite.state is NotificationState.CANCELLED
