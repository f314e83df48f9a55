"""Mail delivery behind a small port: SMTP in production, .eml files in the embedded mode."""

from __future__ import annotations

import email.policy
import os
import re
import smtplib
import ssl
import tempfile
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import Literal, Protocol, cast, get_args

import structlog

from services.notifier.messages import OutgoingMessage

TlsMode = Literal["none", "starttls", "tls"]

_log = structlog.get_logger(__name__)
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
# 530: "authentication / STARTTLS required" (RFC 4954, 3207). Our settings are wrong, not the
# message, so it may go through once they are fixed: transient despite the 5xx.
_SESSION_REFUSALS = frozenset({530})


class MailDeliveryError(Exception):
    """A message was not delivered. `permanent`: the server rejected it for good (5xx), do not retry."""

    def __init__(self, reason: str, *, permanent: bool, smtp_code: int | None = None) -> None:
        super().__init__(reason)
        self.permanent = permanent
        self.smtp_code = smtp_code


class Mailer(Protocol):
    def send(self, message: OutgoingMessage, *, sender: str) -> None: ...


def build_mime(message: OutgoingMessage, *, sender: str) -> EmailMessage:
    """The MIME message both mailers deliver: multipart/alternative with a text and an HTML part."""
    try:
        recipient = Address(display_name=message.to_name, addr_spec=message.to_address)
    except (ValueError, HeaderParseError) as exc:
        # An address that does not parse can never be delivered.
        raise MailDeliveryError(f"invalid recipient address {message.to_address!r}: {exc}", permanent=True) from exc
    mime = EmailMessage(policy=email.policy.SMTP)
    mime["Message-ID"] = message.message_id
    mime["Date"] = format_datetime(datetime.now(UTC))
    mime["From"] = sender
    mime["To"] = recipient
    mime["Subject"] = message.subject
    # RFC 3834: tells auto-responders (out-of-office replies) not to answer.
    mime["Auto-Submitted"] = "auto-generated"
    mime.set_content(message.text)
    mime.add_alternative(message.html, subtype="html")
    return mime


def sender_domain(sender: str) -> str:
    """Domain of a From address ("Course follow-up <no-reply@example.com>" -> "example.com")."""
    local_part, at, domain = parseaddr(sender)[1].rpartition("@")
    if not (local_part and at and domain):
        raise ValueError(f"sender has no domain: {sender!r}")
    return domain


class SmtpMailer:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        tls: TlsMode = "none",
        username: str = "",
        password: str = "",
        timeout_s: float = 10.0,
    ) -> None:
        if tls not in get_args(TlsMode):
            raise ValueError(f"tls must be one of {', '.join(get_args(TlsMode))}; got {tls!r}")
        self._host = host
        self._port = port
        self._tls = tls
        self._username = username
        self._password = password
        self._timeout_s = timeout_s
        # The system trust store (honours SSL_CERT_FILE for a private CA), hostname checked.
        self._ssl_context = ssl.create_default_context() if tls != "none" else None

    def __repr__(self) -> str:
        return f"SmtpMailer(host={self._host!r}, port={self._port}, tls={self._tls!r}, username={self._username!r})"

    def send(self, message: OutgoingMessage, *, sender: str) -> None:
        mime = build_mime(message, sender=sender)
        smtp = self._open()
        try:
            smtp.send_message(mime)
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = next(iter(exc.recipients.values()))
            raise self._rejection(code, reply) from exc
        except smtplib.SMTPResponseException as exc:  # MAIL FROM or DATA refused
            raise self._rejection(exc.smtp_code, exc.smtp_error) from exc
        except OSError as exc:  # disconnects and timeouts; smtplib's exceptions are OSErrors too
            raise MailDeliveryError(
                f"SMTP {self._host}:{self._port} failed during delivery: {exc!r}", permanent=False
            ) from exc
        finally:
            _close_quietly(smtp)
        _log.info("mail_sent", transport="smtp", message_id=message.message_id)

    def ping(self) -> None:
        """Readiness check: the same connection setup as a delivery (TLS, login), then NOOP."""
        smtp = self._open()
        try:
            code, reply = smtp.noop()
        except OSError as exc:
            raise MailDeliveryError(f"SMTP {self._host}:{self._port} NOOP failed: {exc!r}", permanent=False) from exc
        finally:
            _close_quietly(smtp)
        if code != 250:
            raise MailDeliveryError(
                f"SMTP {self._host}:{self._port} answered NOOP with {code} {_text(reply)}",
                permanent=False,
                smtp_code=code,
            )

    def _open(self) -> smtplib.SMTP:
        """Connect, secure and log in. Failures here concern the server or our configuration, not
        the message, so they are transient whatever the reply code: the message may go through
        once the server or settings are fixed."""
        try:
            if self._tls == "tls":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    self._host, self._port, timeout=self._timeout_s, context=self._ssl_context
                )
            else:
                smtp = smtplib.SMTP(self._host, self._port, timeout=self._timeout_s)
        except OSError as exc:
            raise MailDeliveryError(
                f"cannot connect to SMTP {self._host}:{self._port}: {exc!r}", permanent=False
            ) from exc
        try:
            if self._tls == "starttls":
                smtp.starttls(context=self._ssl_context)
            if self._username:
                smtp.login(self._username, self._password)
        except OSError as exc:
            _close_quietly(smtp)
            # smtplib's errors carry the server's reply, never the password we sent.
            raise MailDeliveryError(
                f"SMTP {self._host}:{self._port} session setup failed: {exc!r}",
                permanent=False,
                smtp_code=getattr(exc, "smtp_code", None),
            ) from exc
        return smtp

    def _rejection(self, code: int, reply: bytes | str) -> MailDeliveryError:
        return MailDeliveryError(
            f"SMTP {self._host}:{self._port} rejected the message: {code} {_text(reply)}",
            permanent=500 <= code < 600 and code not in _SESSION_REFUSALS,
            smtp_code=code,
        )


class EmlFolderMailer:
    """Embedded mode: each message becomes `<folder>/<timestamp>-<message-id>.eml`."""

    def __init__(self, folder: Path) -> None:
        self._folder = Path(folder)

    def __repr__(self) -> str:
        return f"EmlFolderMailer(folder={str(self._folder)!r})"

    def send(self, message: OutgoingMessage, *, sender: str) -> None:
        data = build_mime(message, sender=sender).as_bytes()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"{stamp}-{_UNSAFE_FILE_CHARS.sub('_', message.message_id.strip('<>'))}.eml"
        try:
            self._folder.mkdir(parents=True, exist_ok=True)
            _write_atomically(self._folder / name, data)
        except OSError as exc:
            raise MailDeliveryError(f"cannot write {self._folder / name}: {exc!r}", permanent=False) from exc
        _log.info("mail_sent", transport="eml", message_id=message.message_id, file=name)


def mailer_from_settings(
    *,
    smtp_host: str,
    smtp_port: int,
    smtp_tls: str,
    smtp_username: str,
    smtp_password: str,
    data_dir: Path,
) -> Mailer:
    """SMTP when SMTP_HOST is set, else .eml files under DATA_DIR/mail. Connects to nothing."""
    if not smtp_host.strip():
        return EmlFolderMailer(Path(data_dir) / "mail")
    return SmtpMailer(
        host=smtp_host.strip(),
        port=smtp_port,
        tls=cast(TlsMode, smtp_tls),  # SmtpMailer rejects anything else
        username=smtp_username,
        password=smtp_password,
    )


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers of the folder see a whole file or none: write a hidden temp file, then rename."""
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as temp_file:
            temp_file.write(data)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _close_quietly(smtp: smtplib.SMTP) -> None:
    """QUIT, ignoring failures: once DATA is accepted the message is delivered, and reporting a
    failed goodbye as a failed send would cause a duplicate."""
    try:
        smtp.quit()
    except OSError:
        smtp.close()


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
