"""Delivery by the notifier over real SMTP (aiosmtpd), on both stores: outages and retries, dead
letters, replays, a crash between a send and its record, and the .eml folder of the embedded mode.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import threading
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from fastapi.testclient import TestClient

from services.booking.settings import BookingSettings
from services.notifier import retry_dead
from services.notifier.domain import NotificationState
from services.notifier.main import create_app as create_notifier_app
from services.notifier.messages import MessageKind
from services.notifier.settings import NotifierSettings
from tests.fixtures.booking_flows import BookingFlows
from tests.fixtures.notifier import PATIENCE_S, NotifierFlow, NotifierProbe, wait_until
from tests.fixtures.smtp import SmtpTestServer

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def booking_settings(service_env: dict[str, Any]) -> BookingSettings:
    """The notifier reads the booking events, not the booking read models: no booking workers, small pools."""
    return BookingSettings(**service_env | {"db_pool_size": 1, "run_workers": False})


@pytest.mark.drill
def test_an_smtp_outage_is_retried_with_backoff_and_the_mail_delivered_once(
    bookings: BookingFlows, notifier_env: dict[str, Any], smtp_server: SmtpTestServer
) -> None:
    settings = NotifierSettings(
        **notifier_env, smtp_host=smtp_server.host, smtp_port=smtp_server.port, notifier_max_attempts=100
    )
    smtp_server.stop()
    with NotifierProbe(settings) as probe, TestClient(create_notifier_app(settings)) as notifier:
        flow = NotifierFlow(bookings, probe, notifier)
        booking_id = flow.completed("anna")

        failing = wait_until(
            lambda: next((n for n in flow.listed(booking_id) if n["attempts"] >= 3), None), what="three failed attempts"
        )
        assert failing["state"] == "failed"
        assert "cannot connect" in failing["last_error"]
        smtp_server.start()

        delivered = flow.wait_for(booking_id, MessageKind.REVIEW_REMINDER, "sent")
        probe.settle()

        assert len(smtp_server.received) == 1
        assert smtp_server.messages[0]["Message-ID"] == delivered["message_id"]
        assert delivered["attempts"] >= 4
        metrics = notifier.get("/metrics").text
        assert "notifications_sent_total 1.0" in metrics
        assert f"notifications_failed_total {delivered['attempts'] - 1}.0" in metrics
        assert "notifications_queue_depth 0.0" in metrics


def test_a_permanent_rejection_is_a_dead_letter_that_staff_can_requeue(
    notifier_flow: NotifierFlow, smtp_server: SmtpTestServer
) -> None:
    flow = notifier_flow
    smtp_server.reject(550, "5.1.1 No such user", stage="RCPT")
    by_api = flow.completed("anna")
    by_command = flow.completed("bo")
    dead = [flow.wait_for(b, MessageKind.REVIEW_REMINDER, "dead") for b in (by_api, by_command)]
    assert all(n["attempts"] == 1 and "550" in n["last_error"] for n in dead)
    assert "notifications_dead_letters 2.0" in flow.notifier.get("/metrics").text
    smtp_server.accept()

    dead_id = dead[0]["notification_id"]
    participant = flow.tokens("participant", "anna")
    assert flow.notifier.get("/v1/notifications", headers=participant).status_code == 403
    assert flow.notifier.post(f"/v1/notifications/{dead_id}/retry", headers=participant).status_code == 403
    assert flow.notifier.post(f"/v1/notifications/{uuid4()}/retry", headers=flow.staff).status_code == 404
    assert flow.notifier.post("/v1/notifications/not-a-uuid/retry", headers=flow.staff).status_code == 422
    for bad_query in ({"state": "lost"}, {"booking_id": "1"}, {"limit": 0}, {"cursor": "x"}):
        answer = flow.notifier.get("/v1/notifications", params=bad_query, headers=flow.staff)
        assert answer.status_code == 422, bad_query
    assert [
        n["notification_id"]
        for n in flow.notifier.get("/v1/notifications", params={"state": "dead"}, headers=flow.staff).json()["items"]
    ] == [n["notification_id"] for n in dead]

    retried = flow.notifier.post(f"/v1/notifications/{dead_id}/retry", headers=flow.staff)
    assert retried.status_code == 200, retried.text
    assert retried.json()["state"] == "scheduled"
    seen = flow.notifier.get(
        f"/v1/notifications/{dead_id}",
        headers={**flow.staff, "X-Min-Position": retried.headers["X-Event-Position"]},
    )
    assert seen.json()["state"] in ("scheduled", "sent")
    flow.wait_for(by_api, MessageKind.REVIEW_REMINDER, "sent")

    settings: NotifierSettings = flow.notifier.app.state.settings  # type: ignore[attr-defined]
    assert retry_dead.run(settings, argparse.Namespace(notification_ids=[], all=True)) == 0
    flow.wait_for(by_command, MessageKind.REVIEW_REMINDER, "sent")
    flow.probe.settle()

    assert len(smtp_server.received) == 2
    again = flow.notifier.post(f"/v1/notifications/{dead_id}/retry", headers=flow.staff)
    assert (again.status_code, again.json()["error"]["code"]) == (409, "not_dead_letter")


def forget_booking_positions(probe: NotifierProbe) -> None:
    """What a replay needs: the notifier no longer knows which booking events it has handled."""
    recorder: Any = probe.process.recorder
    table = getattr(recorder, "tracking_table_name", "tracking")  # PostgreSQL names it after the app
    with recorder.datastore.transaction(commit=True) as cursor:
        cursor.execute(f"DELETE FROM {table}")


def test_a_replay_of_the_booking_events_sends_nothing_again(
    bookings: BookingFlows,
    notifier_settings: NotifierSettings,
    smtp_server: SmtpTestServer,
    notifier_probe: NotifierProbe,
) -> None:
    with TestClient(create_notifier_app(notifier_settings)) as notifier:
        flow = NotifierFlow(bookings, notifier_probe, notifier)
        reviewed = flow.completed("anna")
        flow.upload_certificate(reviewed)
        flow.review(reviewed, "anna")
        corrected = flow.completed("carl")
        flow.wait_for(reviewed, MessageKind.LINKEDIN_INVITE, "sent")
        flow.wait_for(corrected, MessageKind.REVIEW_REMINDER, "sent")
        flow.status(corrected, "started")  # after its reminder went out: nothing left to cancel
        notifier_probe.settle()
        before = flow.listed(reviewed) + flow.listed(corrected)
    notifier_events = notifier_probe.process.recorder.max_notification_id()
    assert len(smtp_server.received) == 3

    forget_booking_positions(notifier_probe)
    assert notifier_probe.process.recorder.max_tracking_id("booking") is None
    with TestClient(create_notifier_app(notifier_settings)) as notifier:
        notifier_probe.settle()
        flow = NotifierFlow(bookings, notifier_probe, notifier)
        after = flow.listed(reviewed) + flow.listed(corrected)

    assert notifier_probe.process.recorder.max_tracking_id("booking") == bookings.last_position()
    assert notifier_probe.process.recorder.max_notification_id() == notifier_events, "the replay changed nothing"
    assert len(smtp_server.received) == 3
    assert after == before


def test_mail_lands_as_eml_files_without_an_smtp_server(bookings: BookingFlows, notifier_env: dict[str, Any]) -> None:
    settings = NotifierSettings(**notifier_env)
    with NotifierProbe(settings) as probe, TestClient(create_notifier_app(settings)) as notifier:
        flow = NotifierFlow(bookings, probe, notifier)
        booking_id = flow.completed("anna")
        sent = flow.wait_for(booking_id, MessageKind.REVIEW_REMINDER, "sent")
        probe.settle()

    (eml,) = (Path(settings.data_dir) / "mail").glob("*.eml")
    mail = message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert mail["Message-ID"] == sent["message_id"]
    assert mail["To"].addresses[0].addr_spec == "anna@example.se"
    assert mail["Subject"] == "Vad tyckte du om Projektledning?"


# --- a crash between the send and its record ----------------------------------------------------


def hold_first_reply(server: SmtpTestServer) -> threading.Event:
    """The server takes the first message but holds back its "250": the sender is killed while it
    waits, after the message was delivered and before the send could be recorded. Set the
    returned event to let the held reply go."""
    deliver = server.handler.handle_DATA
    release = threading.Event()

    async def slow_first(smtp: Any, session: Any, envelope: Any) -> str:
        reply = await deliver(smtp, session, envelope)
        if len(server.received) == 1:
            for _ in range(300):
                if release.is_set():
                    break
                await asyncio.sleep(0.1)
        return str(reply)

    server.handler.handle_DATA = slow_first  # type: ignore[method-assign]
    return release


def start_worker(settings: NotifierSettings, log_file: Path) -> subprocess.Popen[bytes]:
    """`notifier-worker` in a process of its own, configured through the environment."""
    env = {
        **os.environ,
        "DATA_DIR": str(settings.data_dir),
        "DATABASE_URL": settings.database_url,
        "SMTP_HOST": settings.smtp_host,
        "SMTP_PORT": str(settings.smtp_port),
        "REVIEW_REMINDER_DELAY_S": "0",
        "NOTIFIER_POLL_INTERVAL_S": "0.05",
        "DB_POOL_SIZE": "1",
        "LOG_FORMAT": "json",
    }
    with log_file.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "services.notifier.worker"],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def test_a_sender_killed_between_send_and_record_sends_at_most_one_duplicate(
    bookings: BookingFlows,
    notifier_settings: NotifierSettings,
    smtp_server: SmtpTestServer,
    notifier_probe: NotifierProbe,
    tmp_path: Path,
) -> None:
    release = hold_first_reply(smtp_server)
    log_file = tmp_path / "worker.log"
    booking_id = NotifierFlow(bookings, notifier_probe).completed("anna")
    worker = start_worker(notifier_settings, log_file)
    try:
        smtp_server.wait_for(1, timeout=PATIENCE_S)
        worker.send_signal(signal.SIGKILL)
        assert worker.wait(10) == -signal.SIGKILL
        (row,) = notifier_probe.notifications(booking_id)
        reminder = UUID(row["notification_id"])
        assert notifier_probe.notification(reminder).state is NotificationState.SCHEDULED

        worker = start_worker(notifier_settings, log_file)
        smtp_server.wait_for(2, timeout=PATIENCE_S)
        wait_until(
            lambda: notifier_probe.notification(reminder).state is NotificationState.SENT, PATIENCE_S, "the record"
        )
        notifier_probe.settle()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0, log_file.read_text()
    finally:
        release.set()
        if worker.poll() is None:
            worker.kill()
            worker.wait()

    mails = smtp_server.messages
    assert len(mails) == 2, "one copy before the crash, one after it: never more"
    assert len(notifier_probe.notifications(booking_id)) == 1, "the restarted process scheduled nothing new"
    sent = notifier_probe.notification(reminder)
    assert mails[0]["Message-ID"] == mails[1]["Message-ID"] == sent.message_id
    assert sent.attempts == 1
