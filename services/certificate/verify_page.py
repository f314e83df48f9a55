"""The public verification page (GET /verify/{id} for browsers), in Swedish and English.

It renders exactly the facts of the JSON verification answer; the answer never holds email,
grades or history, so the page cannot show them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from babel.dates import format_date, format_datetime
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from werkzeug.datastructures import LanguageAccept
from werkzeug.http import parse_accept_header

Locale = Literal["sv", "en"]
# English first: a wildcard or an unknown language resolves to English.
SUPPORTED_LOCALES: tuple[Locale, ...] = ("en", "sv")
STATES = ("valid", "revoked", "superseded", "not_found")


@dataclass(frozen=True)
class PageTexts:
    """Every visible string of the page; one instance per locale, so none can be missing."""

    page_title: str
    valid: str
    valid_detail: str
    revoked: str
    revoked_on: str
    revoked_detail: str
    revocation_reason: str
    superseded: str
    superseded_detail: str
    not_found: str
    not_found_detail: str
    file_matches: str
    file_does_not_match: str
    certification: str
    provider: str
    provider_logo_alt: str
    provider_linkedin: str
    issued: str
    holder: str
    holder_initials_only: str
    certificate_id: str
    checked_at: str
    offline_heading: str
    offline_note: str


TEXTS: dict[str, PageTexts] = {
    "en": PageTexts(
        page_title="Certificate verification",
        valid="Valid certificate",
        valid_detail="This certificate is authentic and in force.",
        revoked="Revoked",
        revoked_on="Revoked on {date}",
        revoked_detail="This certificate is no longer valid.",
        revocation_reason="Reason: {reason}",
        superseded="Superseded by a newer certificate",
        superseded_detail="This certificate was replaced by a newer one. Ask the holder for the current certificate.",
        not_found="Not found",
        not_found_detail="No certificate with this ID has been issued here.",
        file_matches="The file you checked is exactly the one that was issued.",
        file_does_not_match="The file you checked was not issued here or has been modified.",
        certification="Certification",
        provider="Issued by",
        provider_logo_alt="Logo of {name}",
        provider_linkedin="{name} on LinkedIn",
        issued="Date issued",
        holder="Holder",
        holder_initials_only="Only initials are shown: the holder has not made their name public.",
        certificate_id="Certificate ID",
        checked_at="Checked",
        offline_heading="Check offline",
        offline_note=(
            "Answers from this service are signed (JWS, Ed25519). Anyone can check a saved "
            "answer offline with the public keys published at:"
        ),
    ),
    "sv": PageTexts(
        page_title="Verifiering av certifikat",
        valid="Giltigt certifikat",
        valid_detail="Certifikatet är äkta och gäller.",
        revoked="Återkallat",
        revoked_on="Återkallat den {date}",
        revoked_detail="Certifikatet gäller inte längre.",
        revocation_reason="Anledning: {reason}",
        superseded="Ersatt av ett nyare certifikat",
        superseded_detail="Certifikatet har ersatts av ett nyare. Be innehavaren om det aktuella certifikatet.",
        not_found="Hittades inte",
        not_found_detail="Inget certifikat med detta id har utfärdats här.",
        file_matches="Filen du kontrollerade är exakt den som utfärdades.",
        file_does_not_match="Filen du kontrollerade har inte utfärdats här eller har ändrats.",
        certification="Certifiering",
        provider="Utfärdat av",
        provider_logo_alt="Logotyp för {name}",
        provider_linkedin="{name} på LinkedIn",
        issued="Utfärdandedatum",
        holder="Innehavare",
        holder_initials_only="Endast initialer visas: innehavaren har inte gjort sitt namn offentligt.",
        certificate_id="Certifikat-id",
        checked_at="Kontrollerat",
        offline_heading="Kontrollera offline",
        offline_note=(
            "Svaren från den här tjänsten är signerade (JWS, Ed25519). Vem som helst kan "
            "kontrollera ett sparat svar offline med de publika nycklarna som publiceras på:"
        ),
    ),
}

_SYMBOLS = {"valid": "✓", "revoked": "✕", "superseded": "↻", "not_found": "?"}


@dataclass(frozen=True)
class Banner:
    state: str
    symbol: str
    title: str
    details: list[str]


@functools.lru_cache(maxsize=256)  # browsers send few distinct headers; parsing one is the costly part
def negotiate_locale(accept_language: str | None) -> Locale:
    """The page language from an Accept-Language header (q-values honoured); English otherwise."""
    accepted = parse_accept_header(accept_language or "", LanguageAccept)
    return accepted.best_match(SUPPORTED_LOCALES, default="en")


def render_verify_page(answer: dict, *, locale: str) -> str:
    if locale not in TEXTS:
        raise ValueError(f"unsupported locale {locale!r}; expected one of {sorted(TEXTS)}")
    if answer["state"] not in STATES:
        raise ValueError(f"unknown verification state {answer['state']!r}")
    texts = TEXTS[locale]
    return _environment.get_template("verify.html").render(
        locale=locale,
        t=texts,
        banner=_banner(answer, texts, locale),
        answer=answer,
        issued_on=_date(answer["issued_at"], locale),
        checked_at=format_datetime(
            _parse(answer["checked_at"]).astimezone(UTC),
            format="long",
            tzinfo=UTC,
            locale=locale,
        ),
    )


def _banner(answer: dict, texts: PageTexts, locale: str) -> Banner:
    state = answer["state"]
    if state == "valid":
        title, details = texts.valid, [texts.valid_detail]
    elif state == "revoked":
        revoked_at = answer["revoked_at"]
        title = texts.revoked_on.format(date=_date(revoked_at, locale)) if revoked_at else texts.revoked
        details = [texts.revoked_detail]
        if answer["revocation_reason"]:
            details.append(texts.revocation_reason.format(reason=answer["revocation_reason"]))
    elif state == "superseded":
        title, details = texts.superseded, [texts.superseded_detail]
    else:
        title, details = texts.not_found, [texts.not_found_detail]
    if answer["file_matches"] is not None:
        details.append(texts.file_matches if answer["file_matches"] else texts.file_does_not_match)
    return Banner(state=state, symbol=_SYMBOLS[state], title=title, details=details)


def _parse(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp)


def _date(timestamp: str | None, locale: str) -> str | None:
    """The calendar date in the timestamp's own offset, as the LinkedIn link takes it."""
    return format_date(_parse(timestamp).date(), format="long", locale=locale) if timestamp else None


def _http_url(url: str | None) -> str | None:
    """Only http(s) links and images: a javascript: or data: URL from a provider is dropped."""
    if not url:
        return None
    try:
        scheme = urlsplit(url).scheme
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return None
    return url if scheme.lower() in ("http", "https") else None


_environment = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_environment.filters["http_url"] = _http_url
