"""Reminder e-mails built from the templates: wording per locale, links, escaping, Message-ID."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any
from uuid import UUID, uuid4

import pytest

from services.notifier.messages import MessageKind, OutgoingMessage, build_message, normalise_locale

REVIEW_URL = "https://booking.example.test/v1/bookings/4f1c/review?source=mail&lang=sv"
LINKEDIN_ADD_URL = (
    "https://www.linkedin.com/profile/add?startTask=CERTIFICATION_NAME"
    "&name=Projektledning%20%26%20ledarskap&organizationId=1337&issueYear=2024&issueMonth=3"
    "&certUrl=https%3A%2F%2Fcert.example.test%2Fverify%2F9b2e&certId=9b2e"
)
VERIFY_URL = "https://cert.example.test/verify/9b2e"


def make(kind: MessageKind, **overrides: Any) -> OutgoingMessage:
    arguments: dict[str, Any] = {
        "kind": kind,
        "notification_id": UUID("0b6f3f0e-6a57-4f0b-9d3c-2f1f8c1e5a01"),
        "locale": "sv",
        "participant_name": "Åsa Öberg",
        "participant_email": "asa.oberg@example.se",
        "course_title": "Projektledning i praktiken",
        "provider_name": "Kompetens & Co AB",
        "review_url": REVIEW_URL,
        "linkedin_add_url": LINKEDIN_ADD_URL if kind is MessageKind.LINKEDIN_INVITE else None,
        "verify_url": VERIFY_URL if kind is MessageKind.LINKEDIN_INVITE else None,
        "mail_domain": "mail.example.test",
    }
    arguments.update(overrides)
    return build_message(**arguments)


class ParsedHtml(HTMLParser):
    """Tags, attributes (entity-decoded, as a browser sees them) and visible text of a document."""

    def __init__(self, document: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text_chunks: list[str] = []
        self.feed(document)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text_chunks.append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.text_chunks).split())

    @property
    def hrefs(self) -> set[str | None]:
        return {attrs.get("href") for tag, attrs in self.tags if tag == "a"}

    def tag_names(self) -> set[str]:
        return {tag for tag, _ in self.tags}


def text_lines(message: OutgoingMessage) -> list[str]:
    return message.text.splitlines()


@pytest.mark.parametrize(
    ("given", "expected"),
    [("sv", "sv"), ("sv-SE", "sv"), ("SV_se", "sv"), ("en", "en"), ("en-GB", "en"), ("de", "en"), ("", "en")],
)
def test_locale_is_reduced_to_a_language_we_have_texts_for(given: str, expected: str) -> None:
    assert normalise_locale(given) == expected
    html = ParsedHtml(make(MessageKind.REVIEW_REMINDER, locale=given).html)
    assert ("html", {"lang": expected}) in html.tags


def test_swedish_review_reminder_asks_for_a_review_and_mentions_linkedin_afterwards() -> None:
    message = make(MessageKind.REVIEW_REMINDER, locale="sv-SE")

    assert message.subject == "Vad tyckte du om Projektledning i praktiken?"
    assert message.text.startswith("Hej Åsa Öberg!\n")
    assert "fullföljt Projektledning i praktiken hos Kompetens & Co AB" in message.text
    assert REVIEW_URL in text_lines(message)
    assert "När du har lämnat din recension kan du lägga till ditt certifikat på din LinkedIn-profil." in message.text
    assert "sex gånger fler besökare" in message.text
    html = ParsedHtml(message.html)
    assert html.hrefs == {REVIEW_URL}
    assert "Skriv en recension" in html.text
    assert "sex gånger fler besökare" in html.text


def test_english_review_reminder_asks_for_a_review_and_mentions_linkedin_afterwards() -> None:
    message = make(MessageKind.REVIEW_REMINDER, locale="en-GB")

    assert message.subject == "What did you think of Projektledning i praktiken?"
    assert message.text.startswith("Hi Åsa Öberg,\n")
    assert REVIEW_URL in text_lines(message)
    assert "you can add your certificate to your LinkedIn profile" in message.text
    assert "six times as many visitors" in message.text
    html = ParsedHtml(message.html)
    assert html.hrefs == {REVIEW_URL}
    assert "Write a review" in html.text


@pytest.mark.parametrize(
    ("locale", "subject", "verify_intro"),
    [
        (
            "sv",
            "Lägg till ditt certifikat för Projektledning i praktiken på LinkedIn",
            "kontrollera att certifikatet är äkta",
        ),
        (
            "en",
            "Add your Projektledning i praktiken certificate to LinkedIn",
            "check that the certificate is genuine",
        ),
    ],
)
def test_linkedin_invite_carries_the_add_to_profile_and_verify_links_intact(
    locale: str, subject: str, verify_intro: str
) -> None:
    message = make(MessageKind.LINKEDIN_INVITE, locale=locale)

    assert message.subject == subject
    assert LINKEDIN_ADD_URL in text_lines(message)
    assert VERIFY_URL in text_lines(message)
    assert verify_intro in message.text
    html = ParsedHtml(message.html)
    # Attribute values come back entity-decoded: the "&" separators survive escaping intact.
    assert html.hrefs == {LINKEDIN_ADD_URL, VERIFY_URL}
    assert verify_intro in html.text
    assert REVIEW_URL not in message.text + message.html


def test_review_reminder_has_no_linkedin_link_before_the_review() -> None:
    message = make(MessageKind.REVIEW_REMINDER, linkedin_add_url=LINKEDIN_ADD_URL, verify_url=VERIFY_URL)

    assert "linkedin.com" not in message.text + message.html


@pytest.mark.parametrize("missing", ["linkedin_add_url", "verify_url"])
def test_linkedin_invite_without_its_links_is_refused(missing: str) -> None:
    with pytest.raises(ValueError, match="linkedin_add_url and verify_url"):
        make(MessageKind.LINKEDIN_INVITE, **{missing: None})


@pytest.mark.parametrize("url", ["javascript:alert(1)", "/relative/review", "https://", "https://a.test/x y"])
def test_links_must_be_absolute_web_urls(url: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        make(MessageKind.REVIEW_REMINDER, review_url=url)


@pytest.mark.parametrize("kind", list(MessageKind))
def test_hostile_names_are_escaped_in_html_and_kept_verbatim_in_text(kind: MessageKind) -> None:
    hostile_name = '<script>alert("x")</script><img src=x onerror=alert(1)> & Bob'
    hostile_title = '<b>Kurs</b> "A&B"'
    message = make(kind, participant_name=hostile_name, course_title=hostile_title, locale="en")

    html = ParsedHtml(message.html)
    assert "<script" not in message.html
    assert "<img" not in message.html
    assert "<b>Kurs" not in message.html
    assert {"script", "img", "b"}.isdisjoint(html.tag_names())
    # Escaped, the hostile strings are shown as text, exactly as written.
    assert f"Hi {hostile_name}," in html.text
    assert hostile_title in html.text
    assert message.text.startswith(f"Hi {hostile_name},\n")
    assert hostile_title in message.subject


@pytest.mark.parametrize("kind", list(MessageKind))
def test_html_uses_inline_css_and_no_external_assets(kind: MessageKind) -> None:
    html = ParsedHtml(make(kind).html)

    assert {"style", "link", "script", "img", "iframe"}.isdisjoint(html.tag_names())
    assert not any("src" in attrs or "background" in attrs for _, attrs in html.tags)
    assert any("style" in attrs for tag, attrs in html.tags if tag == "a")


def test_line_breaks_in_names_cannot_reach_the_headers() -> None:
    message = make(
        MessageKind.REVIEW_REMINDER,
        participant_name="Åsa\r\nBcc: victim@example.test",
        course_title="Kurs\nX-Injected: yes",
    )

    assert message.to_name == "Åsa Bcc: victim@example.test"
    assert message.subject == "Vad tyckte du om Kurs X-Injected: yes?"


def test_missing_name_gives_a_greeting_without_one() -> None:
    assert make(MessageKind.REVIEW_REMINDER, participant_name="  ").text.startswith("Hej!\n")
    assert make(MessageKind.REVIEW_REMINDER, participant_name="", locale="en").text.startswith("Hi,\n")


def test_message_id_is_stable_per_notification_and_differs_between_notifications() -> None:
    notification_id = uuid4()
    first = make(MessageKind.REVIEW_REMINDER, notification_id=notification_id)
    resent = make(MessageKind.REVIEW_REMINDER, notification_id=notification_id)
    other = make(MessageKind.REVIEW_REMINDER, notification_id=uuid4())

    assert first.message_id == resent.message_id == f"<{notification_id}@mail.example.test>"
    assert other.message_id != first.message_id


def test_recipient_fields_come_from_the_participant() -> None:
    message = make(MessageKind.LINKEDIN_INVITE, participant_email=" asa.oberg@example.se ")

    assert (message.to_name, message.to_address) == ("Åsa Öberg", "asa.oberg@example.se")


@pytest.mark.parametrize("domain", ["", "mail example.test", "a@b.test", "<x>", "-bad.test"])
def test_mail_domain_must_be_a_host_name(domain: str) -> None:
    with pytest.raises(ValueError, match="mail_domain"):
        make(MessageKind.REVIEW_REMINDER, mail_domain=domain)
