"""Mail delivery against a real SMTP server (aiosmtpd on loopback) and into an .eml folder."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import uuid4

import pytest

from services.notifier.mail import (
    EmlFolderMailer,
    MailDeliveryError,
    SmtpMailer,
    build_mime,
    mailer_from_settings,
    sender_domain,
)
from services.notifier.messages import MessageKind, OutgoingMessage, build_message

if TYPE_CHECKING:
    from tests.fixtures.smtp import SmtpTestServer, TlsCertificate

SENDER = "Kursuppföljning <no-reply@mail.example.test>"
PASSWORD = "s3cret-Pa55word!"
HEADERS = ("From", "To", "Subject", "Message-ID", "Date", "Auto-Submitted")


@pytest.fixture
def outgoing() -> OutgoingMessage:
    return build_message(
        kind=MessageKind.LINKEDIN_INVITE,
        notification_id=uuid4(),
        locale="sv",
        participant_name="Åsa Öberg",
        participant_email="asa.oberg@example.se",
        course_title="Arbetsmiljö & säkerhet",
        provider_name="Kompetens AB",
        review_url="https://booking.example.test/review/1",
        linkedin_add_url=(
            "https://www.linkedin.com/profile/add?startTask=CERTIFICATION_NAME&name=Arbetsmilj%C3%B6&certId=c1"
        ),
        verify_url="https://cert.example.test/verify/c1",
        mail_domain="mail.example.test",
    )


def smtp_mailer(server: SmtpTestServer, **options: object) -> SmtpMailer:
    return SmtpMailer(host=server.host, port=server.port, **options)  # type: ignore[arg-type]


def decoded_parts(message: EmailMessage) -> tuple[str, str]:
    text_part = message.get_body(preferencelist=("plain",))
    html_part = message.get_body(preferencelist=("html",))
    assert text_part is not None and html_part is not None
    return (
        text_part.get_content().replace("\r\n", "\n"),
        html_part.get_content().replace("\r\n", "\n"),
    )


def assert_is_the_message(received: EmailMessage, outgoing: OutgoingMessage) -> None:
    assert received.get_content_type() == "multipart/alternative"
    assert received["Message-ID"] == outgoing.message_id
    assert received["Subject"] == outgoing.subject
    assert received["From"].addresses[0].display_name == "Kursuppföljning"
    assert received["From"].addresses[0].addr_spec == "no-reply@mail.example.test"
    (recipient,) = received["To"].addresses
    assert (recipient.display_name, recipient.addr_spec) == ("Åsa Öberg", "asa.oberg@example.se")
    assert received["Auto-Submitted"] == "auto-generated"
    sent_at = received["Date"].datetime
    assert abs(datetime.now(UTC) - sent_at) < timedelta(minutes=1)
    assert decoded_parts(received) == (outgoing.text, outgoing.html)


def raw_header_block(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


def test_smtp_mailer_delivers_both_parts_with_encoded_headers(
    smtp_server: SmtpTestServer, outgoing: OutgoingMessage
) -> None:
    smtp_mailer(smtp_server).send(outgoing, sender=SENDER)

    (received,) = smtp_server.wait_for(1)
    assert_is_the_message(received, outgoing)
    (envelope,) = smtp_server.received
    assert envelope.mail_from == "no-reply@mail.example.test"
    assert envelope.rcpt_tos == ["asa.oberg@example.se"]
    # Non-ASCII names and subject travel as RFC 2047 encoded words: the header block is pure ASCII.
    headers = raw_header_block(envelope.data)
    assert headers.isascii()
    assert b"=?utf-8?" in headers


def test_smtp_down_is_a_quick_transient_failure_and_delivery_resumes_when_it_is_back(
    smtp_server: SmtpTestServer, outgoing: OutgoingMessage
) -> None:
    mailer = smtp_mailer(smtp_server, timeout_s=10.0)
    smtp_server.stop()

    started = time.monotonic()
    with pytest.raises(MailDeliveryError) as failure:
        mailer.send(outgoing, sender=SENDER)
    assert time.monotonic() - started < 2.0
    assert failure.value.permanent is False
    with pytest.raises(MailDeliveryError):
        mailer.ping()

    smtp_server.start()
    mailer.ping()
    mailer.send(outgoing, sender=SENDER)
    assert [m["Message-ID"] for m in smtp_server.wait_for(1)] == [outgoing.message_id]


@pytest.fixture
def silent_listener() -> Iterator[tuple[str, int]]:
    """Accepts TCP connections (kernel backlog) but never greets: a hung mail server."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        yield listener.getsockname()


def test_server_that_never_answers_times_out_as_transient(
    silent_listener: tuple[str, int], outgoing: OutgoingMessage
) -> None:
    host, port = silent_listener
    mailer = SmtpMailer(host=host, port=port, timeout_s=0.3)

    started = time.monotonic()
    with pytest.raises(MailDeliveryError) as failure:
        mailer.send(outgoing, sender=SENDER)
    assert 0.25 < time.monotonic() - started < 3.0
    assert failure.value.permanent is False


@pytest.mark.parametrize(
    ("code", "stage", "permanent"),
    [
        (550, "RCPT", True),
        (550, "DATA", True),
        (553, "MAIL", True),
        (451, "RCPT", False),
        (451, "DATA", False),
        (421, "MAIL", False),
    ],
)
def test_rejections_are_classified_by_reply_code(
    smtp_server: SmtpTestServer, outgoing: OutgoingMessage, code: int, stage: str, permanent: bool
) -> None:
    smtp_server.reject(code, "Rejected by test", stage=stage)  # type: ignore[arg-type]

    with pytest.raises(MailDeliveryError) as failure:
        smtp_mailer(smtp_server).send(outgoing, sender=SENDER)

    assert failure.value.permanent is permanent
    assert failure.value.smtp_code == code
    assert "Rejected by test" in str(failure.value)
    assert smtp_server.received == []


def test_transient_rejection_then_acceptance_delivers_once(
    smtp_server: SmtpTestServer, outgoing: OutgoingMessage
) -> None:
    mailer = smtp_mailer(smtp_server)
    smtp_server.reject(451, "Try again later", stage="RCPT")
    with pytest.raises(MailDeliveryError):
        mailer.send(outgoing, sender=SENDER)

    smtp_server.accept()
    mailer.send(outgoing, sender=SENDER)

    assert len(smtp_server.wait_for(1)) == 1


def test_invalid_recipient_address_is_permanent_and_nothing_is_sent(
    smtp_server: SmtpTestServer, outgoing: OutgoingMessage
) -> None:
    broken = replace(outgoing, to_address="not-an-address")

    with pytest.raises(MailDeliveryError) as failure:
        smtp_mailer(smtp_server).send(broken, sender=SENDER)

    assert failure.value.permanent is True
    assert smtp_server.received == []


@pytest.fixture
def trust_test_ca(monkeypatch: pytest.MonkeyPatch, smtp_tls_certificate: TlsCertificate) -> None:
    # The mailer uses the system trust store; SSL_CERT_FILE is how an operator adds a private CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(smtp_tls_certificate.ca_file))


@pytest.mark.parametrize("tls", ["starttls", "tls"])
def test_tls_with_login_delivers(
    smtp_server_factory: Callable[..., SmtpTestServer],
    trust_test_ca: None,
    outgoing: OutgoingMessage,
    tls: str,
) -> None:
    server = smtp_server_factory(tls=tls, credentials=("notifier", PASSWORD))
    mailer = smtp_mailer(server, tls=tls, username="notifier", password=PASSWORD)

    mailer.ping()
    mailer.send(outgoing, sender=SENDER)

    (received,) = server.wait_for(1)
    assert_is_the_message(received, outgoing)
    (envelope,) = server.received
    assert envelope.tls is True
    assert envelope.authenticated_as == "notifier"


@pytest.mark.parametrize("tls", ["starttls", "tls"])
def test_untrusted_server_certificate_is_refused(
    smtp_server_factory: Callable[..., SmtpTestServer], outgoing: OutgoingMessage, tls: str
) -> None:
    server = smtp_server_factory(tls=tls)

    with pytest.raises(MailDeliveryError, match="CERTIFICATE_VERIFY_FAILED") as failure:
        smtp_mailer(server, tls=tls).send(outgoing, sender=SENDER)

    assert failure.value.permanent is False
    assert server.received == []


def test_wrong_password_fails_without_revealing_it(
    smtp_server_factory: Callable[..., SmtpTestServer],
    trust_test_ca: None,
    outgoing: OutgoingMessage,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = smtp_server_factory(tls="starttls", credentials=("notifier", "the-right-one"))
    mailer = smtp_mailer(server, tls="starttls", username="notifier", password=PASSWORD)

    with pytest.raises(MailDeliveryError) as failure:
        mailer.send(outgoing, sender=SENDER)

    # A login failure is about our settings, not this message: retry once they are fixed.
    assert failure.value.permanent is False
    assert failure.value.smtp_code == 535
    captured = capsys.readouterr()
    shown = (str(failure.value), repr(failure.value), repr(mailer), captured.out, captured.err, caplog.text)
    assert not [text for text in shown if PASSWORD in text]
    assert server.received == []


def test_starttls_required_by_server_but_not_configured_is_transient(
    smtp_server_factory: Callable[..., SmtpTestServer], outgoing: OutgoingMessage
) -> None:
    server = smtp_server_factory(tls="starttls")

    with pytest.raises(MailDeliveryError) as failure:
        smtp_mailer(server).send(outgoing, sender=SENDER)

    # 530 at MAIL FROM: "Must issue a STARTTLS command first", a settings problem, not the message.
    assert failure.value.smtp_code == 530
    assert failure.value.permanent is False
    assert server.received == []


def read_eml_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.eml"))


def test_eml_folder_mailer_writes_a_parseable_message_with_the_same_headers_as_smtp(
    tmp_path: Path, smtp_server: SmtpTestServer, outgoing: OutgoingMessage
) -> None:
    folder = tmp_path / "var" / "mail"
    EmlFolderMailer(folder).send(outgoing, sender=SENDER)
    smtp_mailer(smtp_server).send(outgoing, sender=SENDER)

    (eml_file,) = read_eml_files(folder)
    assert list(folder.iterdir()) == [eml_file]  # no temporary file left behind
    assert eml_file.name.endswith(f"-{outgoing.message_id.strip('<>').replace('@', '_')}.eml")
    from_file = message_from_bytes(eml_file.read_bytes(), policy=policy.default)
    assert isinstance(from_file, EmailMessage)
    assert_is_the_message(from_file, outgoing)
    (over_smtp,) = smtp_server.wait_for(1)
    for header in HEADERS:
        if header != "Date":
            assert from_file[header] == over_smtp[header], header
    assert from_file.keys() == over_smtp.keys()


def test_eml_files_of_successive_sends_sort_by_time(tmp_path: Path, outgoing: OutgoingMessage) -> None:
    mailer = EmlFolderMailer(tmp_path)
    for _ in range(3):
        mailer.send(outgoing, sender=SENDER)

    files = read_eml_files(tmp_path)
    assert len(files) == 3
    stamps = [path.name.split("-", 1)[0] for path in files]
    assert stamps == sorted(set(stamps))


def test_eml_folder_that_cannot_be_written_is_a_transient_failure(tmp_path: Path, outgoing: OutgoingMessage) -> None:
    occupied = tmp_path / "mail"
    occupied.write_text("a file where the folder should be")

    with pytest.raises(MailDeliveryError) as failure:
        EmlFolderMailer(occupied).send(outgoing, sender=SENDER)

    assert failure.value.permanent is False


def test_build_mime_is_what_both_mailers_send(outgoing: OutgoingMessage) -> None:
    mime = build_mime(outgoing, sender=SENDER)

    assert [part.get_content_type() for part in mime.iter_parts()] == ["text/plain", "text/html"]
    assert all(part.get_content_charset() == "utf-8" for part in mime.iter_parts())
    parsed = message_from_bytes(mime.as_bytes(), policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    assert_is_the_message(parsed, outgoing)


def test_settings_without_smtp_host_write_eml_files_under_data_dir(tmp_path: Path, outgoing: OutgoingMessage) -> None:
    mailer = mailer_from_settings(
        smtp_host="", smtp_port=25, smtp_tls="none", smtp_username="", smtp_password="", data_dir=tmp_path
    )

    mailer.send(outgoing, sender=SENDER)

    assert isinstance(mailer, EmlFolderMailer)
    assert len(read_eml_files(tmp_path / "mail")) == 1


def test_settings_with_smtp_host_deliver_over_smtp(
    tmp_path: Path, smtp_server: SmtpTestServer, outgoing: OutgoingMessage
) -> None:
    mailer = mailer_from_settings(
        smtp_host=smtp_server.host,
        smtp_port=smtp_server.port,
        smtp_tls="none",
        smtp_username="",
        smtp_password="",
        data_dir=tmp_path,
    )

    mailer.send(outgoing, sender=SENDER)

    assert isinstance(mailer, SmtpMailer)
    assert len(smtp_server.wait_for(1)) == 1
    assert not (tmp_path / "mail").exists()


def test_settings_with_unknown_tls_mode_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="none, starttls, tls"):
        mailer_from_settings(
            smtp_host="smtp.example.test",
            smtp_port=587,
            smtp_tls="ssl",
            smtp_username="",
            smtp_password="",
            data_dir=tmp_path,
        )


def test_sender_domain_feeds_message_ids() -> None:
    assert sender_domain(SENDER) == "mail.example.test"
    with pytest.raises(ValueError):
        sender_domain("Course follow-up")
