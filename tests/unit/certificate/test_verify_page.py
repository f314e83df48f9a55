import dataclasses
import re
from html.parser import HTMLParser

import pytest

from services.certificate.verify_page import TEXTS, negotiate_locale, render_verify_page

VALID = {
    "certificate_id": "c-7f3a",
    "state": "valid",
    "revoked_at": None,
    "revocation_reason": None,
    "certification": {"name": "Brandskydd Grund"},
    "provider": {
        "name": "Åkes Utbildning AB",
        "logo_url": "https://cdn.example.se/akes.png",
        "linkedin_url": "https://www.linkedin.com/company/1337/",
    },
    "issued_at": "2024-03-07T14:30:00+00:00",
    "holder": {"name": None, "initials": "A. S."},
    "file_matches": None,
    "checked_at": "2025-01-02T03:04:05+00:00",
}
REVOKED = {
    **VALID,
    "state": "revoked",
    "revoked_at": "2024-05-02T09:00:00+00:00",
    "revocation_reason": "Status changed from completed",
}
SUPERSEDED = {**VALID, "state": "superseded"}
NOT_FOUND = {
    "certificate_id": "c-unknown",
    "state": "not_found",
    "revoked_at": None,
    "revocation_reason": None,
    "certification": None,
    "provider": None,
    "issued_at": None,
    "holder": None,
    "file_matches": None,
    "checked_at": "2025-01-02T03:04:05Z",
}
ANSWERS = {"valid": VALID, "revoked": REVOKED, "superseded": SUPERSEDED, "not_found": NOT_FOUND}


class _Page(HTMLParser):
    """What a reader sees (text outside head, plus alt texts) and which elements there are."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self._text: list[str] = []
        self._in_head = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        self._in_head |= tag == "head"
        if tag == "img" and dict(attrs).get("alt"):
            self._text.append(dict(attrs)["alt"])

    def handle_endtag(self, tag):
        self._in_head &= tag != "head"

    def handle_data(self, data):
        if not self._in_head:
            self._text.append(data)

    @property
    def text(self) -> str:
        return re.sub(r"\s+", " ", " ".join(self._text)).strip()

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.elements if name == tag]


def _page(answer: dict, locale: str) -> _Page:
    return _Page(render_verify_page(answer, locale=locale))


STATE_TITLES = {
    ("valid", "sv"): "Giltigt certifikat",
    ("valid", "en"): "Valid certificate",
    ("revoked", "sv"): "Återkallat den 2 maj 2024",
    ("revoked", "en"): "Revoked on May 2, 2024",
    ("superseded", "sv"): "Ersatt av ett nyare certifikat",
    ("superseded", "en"): "Superseded by a newer certificate",
    ("not_found", "sv"): "Hittades inte",
    ("not_found", "en"): "Not found",
}


@pytest.mark.parametrize(("state", "locale"), list(STATE_TITLES))
def test_state_banner_says_the_state_in_words(state, locale):
    page = _page(ANSWERS[state], locale)
    (banner,) = [attrs for attrs in page.all("section") if "banner" in (attrs["class"] or "")]
    assert banner["class"] == f"banner banner-{state}"
    assert STATE_TITLES[(state, locale)] in page.text
    other_titles = {title for (other, lang), title in STATE_TITLES.items() if lang == locale and other != state}
    assert not any(title in page.text for title in other_titles)
    assert page.all("html") == [{"lang": locale}]


def test_revoked_page_gives_the_reason():
    assert "Anledning: Status changed from completed" in _page(REVOKED, "sv").text
    assert "Reason: Status changed from completed" in _page(REVOKED, "en").text


def test_revoked_without_date_still_says_revoked():
    assert "Återkallat Certifikatet gäller inte längre." in _page({**REVOKED, "revoked_at": None}, "sv").text


@pytest.mark.parametrize(
    ("locale", "facts"),
    [
        (
            "sv",
            [
                "Certifiering Brandskydd Grund",
                "Utfärdat av Logotyp för Åkes Utbildning AB Åkes Utbildning AB",
                "Åkes Utbildning AB på LinkedIn",
                "Utfärdandedatum 7 mars 2024",
                "Innehavare A. S.",
                "Endast initialer visas",
                "Certifikat-id c-7f3a",
                "Kontrollerat 2 januari 2025 03:04:05 UTC",
            ],
        ),
        (
            "en",
            [
                "Certification Brandskydd Grund",
                "Issued by Logo of Åkes Utbildning AB Åkes Utbildning AB",
                "Åkes Utbildning AB on LinkedIn",
                "Date issued March 7, 2024",
                "Holder A. S.",
                "Only initials are shown",
                "Certificate ID c-7f3a",
                "Checked January 2, 2025, 3:04:05 AM UTC",
            ],
        ),
    ],
)
def test_valid_page_shows_the_facts(locale, facts):
    page = _page(VALID, locale)
    for fact in facts:
        assert fact in page.text
    (logo,) = page.all("img")
    assert logo["src"] == "https://cdn.example.se/akes.png"
    assert logo["referrerpolicy"] == "no-referrer" and logo["alt"]
    links = {attrs["href"] for attrs in page.all("a")}
    assert links == {"https://www.linkedin.com/company/1337/", "/.well-known/jwks.json"}


def test_public_holder_name_is_shown_instead_of_initials():
    page = _page({**VALID, "holder": {"name": "Anna Svensson", "initials": "A. S."}}, "sv")
    assert "Innehavare Anna Svensson" in page.text
    assert "A. S." not in page.text and "initialer" not in page.text


def test_provider_without_logo_or_linkedin_page():
    provider = {"name": "Åkes Utbildning AB", "logo_url": None, "linkedin_url": None}
    page = _page({**VALID, "provider": provider}, "en")
    assert "Issued by Åkes Utbildning AB" in page.text
    assert page.all("img") == []
    assert [attrs["href"] for attrs in page.all("a")] == ["/.well-known/jwks.json"]


def test_not_found_page_shows_only_the_id_and_the_check():
    page = _page(NOT_FOUND, "en")
    assert "Certificate ID c-unknown" in page.text
    for absent in ("Certification", "Issued by", "Date issued", "Holder"):
        assert absent not in page.text


@pytest.mark.parametrize(
    ("answer", "locale", "line"),
    [
        ({**VALID, "file_matches": True}, "en", "The file you checked is exactly the one that was issued."),
        ({**VALID, "file_matches": True}, "sv", "Filen du kontrollerade är exakt den som utfärdades."),
        ({**NOT_FOUND, "file_matches": False}, "en", "not issued here or has been modified"),
        ({**NOT_FOUND, "file_matches": False}, "sv", "har inte utfärdats här eller har ändrats"),
    ],
)
def test_uploaded_file_result(answer, locale, line):
    assert line in _page(answer, locale).text


@pytest.mark.parametrize("locale", ["sv", "en"])
def test_offline_check_links_the_published_keys(locale):
    page = _page(VALID, locale)
    assert {"href": "/.well-known/jwks.json"} in page.all("a")
    assert TEXTS[locale].offline_note in page.text


HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


@pytest.mark.parametrize("locale", ["sv", "en"])
def test_hostile_names_are_escaped(locale):
    answer = {
        **REVOKED,
        "certificate_id": HOSTILE,
        "certification": {"name": HOSTILE},
        "provider": {**VALID["provider"], "name": HOSTILE},
        "holder": {"name": HOSTILE, "initials": "X"},
        "revocation_reason": HOSTILE,
    }
    html = render_verify_page(answer, locale=locale)
    assert "<script" not in html.lower()
    page = _Page(html)
    assert page.text.count(HOSTILE) >= 5  # id, certification, provider, holder, reason: as text
    assert [attrs["src"] for attrs in page.all("img")] == [VALID["provider"]["logo_url"]]
    assert not any(name.startswith("on") for _, attrs in page.elements for name in attrs)


@pytest.mark.parametrize(
    "url", ["javascript:alert(1)", "JavaScript:alert(1)", "data:text/html,<b>x</b>", "//evil.example/x", "http://[::1"]
)
def test_only_http_urls_become_links_or_images(url):
    page = _page({**VALID, "provider": {"name": "P", "logo_url": url, "linkedin_url": url}}, "en")
    assert page.all("img") == []
    assert [attrs["href"] for attrs in page.all("a")] == ["/.well-known/jwks.json"]


@pytest.mark.parametrize(("state", "locale"), list(STATE_TITLES))
def test_self_contained_phone_friendly_page(state, locale):
    html = render_verify_page(ANSWERS[state], locale=locale)
    page = _Page(html)
    lowered = html.lower()
    assert "<script" not in lowered and "<link" not in lowered
    assert "@import" not in lowered and "url(" not in lowered and "@font-face" not in lowered
    assert {"name": "viewport", "content": "width=device-width, initial-scale=1"} in page.all("meta")
    # The only thing loaded from elsewhere may be the provider's logo.
    assert all(attrs["src"] == VALID["provider"]["logo_url"] for attrs in page.all("img"))
    assert "max-width: 40rem" in html  # one readable column that shrinks to a 360 px screen


@pytest.mark.parametrize(("shown", "hidden"), [("sv", "en"), ("en", "sv")])
def test_no_text_of_the_other_language_leaks(shown, hidden):
    text = " ".join(_page(answer, shown).text for answer in [*ANSWERS.values(), {**VALID, "file_matches": True}])
    for field in dataclasses.fields(TEXTS[hidden]):
        foreign = getattr(TEXTS[hidden], field.name).split("{")[0].strip()
        if foreign and foreign != getattr(TEXTS[shown], field.name).split("{")[0].strip():
            assert foreign not in text, field.name


def test_page_never_mentions_email_grades_or_history():
    # Extra keys an answer must not have are not rendered even if a caller passed them.
    leaky = {**VALID, "email": "anna@example.se", "grade": "A", "history": ["started"]}
    text = _page(leaky, "en").text
    assert "anna@example.se" not in text and "history" not in text.lower()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("sv-SE,sv;q=0.9,en;q=0.8", "sv"),
        ("en-US", "en"),
        ("de", "en"),
        ("en;q=0.1, sv;q=0.5", "sv"),
        ("de-DE, sv;q=0.3, en;q=0.2", "sv"),
        ("sv-FI", "sv"),
        ("SV", "sv"),
        ("*", "en"),
        ("sv;q=0", "en"),
        ("garbage;;;q=x,,", "en"),
        ("", "en"),
        (None, "en"),
    ],
)
def test_negotiate_locale(header, expected):
    assert negotiate_locale(header) == expected


def test_unknown_locale_or_state_is_a_programming_error():
    with pytest.raises(ValueError):
        render_verify_page(VALID, locale="de")
    with pytest.raises(ValueError):
        render_verify_page({**VALID, "state": "expired"}, locale="en")
