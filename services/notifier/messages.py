"""Builds the reminder e-mails from the Jinja2 templates (pure: no I/O besides reading templates).

Template layout (services/notifier/templates/):
- `<locale>/common.jinja`, `<locale>/<kind>.jinja`: the wording, as top-level `{% set %}` blocks.
  One file per language, so a translator edits words without touching markup.
- `<kind>.txt`, `<kind>.html` (+ `layout.html`, `components.html`): where the words go, shared
  by all languages. Only `.html` templates autoescape; wording rendered without escaping is
  escaped once where the HTML template prints it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

TEMPLATE_DIR = Path(__file__).with_name("templates")
SUPPORTED_LOCALES = ("sv", "en")
DEFAULT_LOCALE = "en"

_MAIL_DOMAIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")


class MessageKind(StrEnum):
    REVIEW_REMINDER = "review_reminder"
    LINKEDIN_INVITE = "linkedin_invite"


@dataclass(frozen=True)
class OutgoingMessage:
    message_id: str
    to_name: str
    to_address: str
    subject: str
    text: str
    html: str


def normalise_locale(locale: str) -> str:
    """Primary language of a tag ("sv-SE" -> "sv"); anything we have no texts for -> English."""
    language = re.split(r"[-_]", locale.strip(), maxsplit=1)[0].lower()
    return language if language in SUPPORTED_LOCALES else DEFAULT_LOCALE


def message_id_for(notification_id: UUID, mail_domain: str) -> str:
    """Stable per notification, so a resend after a crash is recognisably the same message."""
    if not _MAIL_DOMAIN.fullmatch(mail_domain):
        raise ValueError(f"mail_domain is not a host name: {mail_domain!r}")
    return f"<{notification_id}@{mail_domain}>"


def build_message(
    *,
    kind: MessageKind,
    notification_id: UUID,
    locale: str,
    participant_name: str,
    participant_email: str,
    course_title: str,
    provider_name: str,
    review_url: str,
    linkedin_add_url: str | None,
    verify_url: str | None,
    mail_domain: str,
) -> OutgoingMessage:
    kind = MessageKind(kind)
    if kind is MessageKind.LINKEDIN_INVITE and not (linkedin_add_url and verify_url):
        raise ValueError("a LinkedIn invitation needs linkedin_add_url and verify_url")
    for url in (review_url, linkedin_add_url, verify_url):
        if url is not None:
            _require_web_url(url)

    language = normalise_locale(locale)
    # Collapsed whitespace: these values end up in headers, where a line break would be an injection.
    variables: dict[str, Any] = {
        "lang": language,
        "participant_name": _single_line(participant_name),
        "course_title": _single_line(course_title),
        "provider_name": _single_line(provider_name),
        "review_url": review_url,
        "linkedin_add_url": linkedin_add_url,
        "verify_url": verify_url,
    }
    environment = _environment()
    variables["common"] = environment.get_template(f"{language}/common.jinja").make_module(variables)
    variables["copy"] = environment.get_template(f"{language}/{kind}.jinja").make_module(variables)
    subject = _single_line(str(variables["copy"].subject))
    return OutgoingMessage(
        message_id=message_id_for(notification_id, mail_domain),
        to_name=variables["participant_name"],
        to_address=participant_email.strip(),
        subject=subject,
        text=environment.get_template(f"{kind}.txt").render(variables),
        html=environment.get_template(f"{kind}.html").render(variables, subject=subject),
    )


@functools.cache
def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATE_DIR),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _single_line(value: str) -> str:
    return " ".join(value.split())


def _require_web_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in url):
        raise ValueError(f"not an absolute http(s) URL: {url!r}")
