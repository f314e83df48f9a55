"""The public verification page in a real headless Chromium, on a phone-sized window.

The certificate service is served over HTTP on loopback; Chromium loads /verify/{id} for a valid,
a revoked and an unknown certificate in Swedish and English, saves a screenshot of each under
test-output/verify-page/ and dumps the DOM, whose visible text is what the assertions read.

Without Chromium the test is skipped, except when REQUIRE_CHROMIUM=1 (CI), where it fails.
The page does not depend on the store, so it runs on SQLite only.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest
from babel.dates import format_date

from services.certificate.main import create_app as create_certificate_app
from tests.fixtures.services import CertificateScenario, served
from tests.fixtures.verification import OTHER_PDF, VerificationFlows

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "verify-page"
WINDOW = (390, 844)
CHROMIUM_TIMEOUT_S = 60
BROWSERS_AT_ONCE = 3
LANGUAGES = {"sv": "sv-SE,sv", "en": "en-GB,en"}


@pytest.fixture
def store() -> str:
    return "sqlite"


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None:
        if os.environ.get("REQUIRE_CHROMIUM") == "1":
            pytest.fail("Chromium is required (REQUIRE_CHROMIUM=1) but `chromium` is not installed")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return path


class VisibleText(HTMLParser):
    """The text of <body> as a reader sees it (no scripts or styles), and the <html lang>."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.lang: str | None = None
        self._parts: list[str] = []
        self._hidden = 0
        self._in_body = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "html":
            self.lang = dict(attrs).get("lang")
        self._in_body |= tag == "body"
        self._hidden += tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self._hidden -= tag in ("script", "style")

    def handle_data(self, data: str) -> None:
        if self._in_body and not self._hidden:
            self._parts.append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self._parts).split())


def open_in_chromium(chromium: str, url: str, locale: str, screenshot: Path, profile: Path) -> VisibleText:
    """One browser run: screenshot to `screenshot`, the rendered DOM on standard output."""
    completed = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--lang={LANGUAGES[locale].split(',')[0]}",
            f"--accept-lang={LANGUAGES[locale]}",
            f"--screenshot={screenshot}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=CHROMIUM_TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return VisibleText(completed.stdout)


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def long_date(timestamp: str, locale: str) -> str:
    return format_date(datetime.fromisoformat(timestamp).date(), format="long", locale=locale)


def test_the_verify_page_reads_right_in_a_browser(
    chromium: str,
    certificate_scenario: CertificateScenario,
    verification: VerificationFlows,
    tmp_path: Path,
) -> None:
    scenario = certificate_scenario
    party = scenario.provider("Kurs AB", certification="Certifierad projektledare")
    valid = verification.issue(party, scenario.booking_for(party, participant_id="anna"))
    verification.make_public(valid.certificate_id, "anna")
    revoked = verification.issue(party, scenario.booking_for(party, participant_id="bertil"), OTHER_PDF)
    verification.revoke(party, revoked.certificate_id, "issued in error")
    answers = {
        "valid": verification.by_id(valid.certificate_id).json(),
        "revoked": verification.by_id(revoked.certificate_id).json(),
    }
    assert (answers["valid"]["state"], answers["revoked"]["state"]) == ("valid", "revoked")
    unknown_id = "6f1c1d9e-0000-4000-8000-000000000000"
    expected = {
        ("valid", "sv"): [
            "Giltigt certifikat",
            "Certifikatet är äkta och gäller.",
            "Certifiering Certifierad projektledare",
            "Utfärdat av Kurs AB",
            "Kurs AB på LinkedIn",
            "Innehavare Anna Svensson",
            f"Utfärdandedatum {long_date(answers['valid']['issued_at'], 'sv')}",
        ],
        ("valid", "en"): [
            "Valid certificate",
            "This certificate is authentic and in force.",
            "Certification Certifierad projektledare",
            "Issued by Kurs AB",
            "Kurs AB on LinkedIn",
            "Holder Anna Svensson",
            f"Date issued {long_date(answers['valid']['issued_at'], 'en')}",
        ],
        ("revoked", "sv"): [
            f"Återkallat den {long_date(answers['revoked']['revoked_at'], 'sv')}",
            "Certifikatet gäller inte längre.",
            "Innehavare A. S.",
            "Endast initialer visas",
        ],
        ("revoked", "en"): [
            f"Revoked on {long_date(answers['revoked']['revoked_at'], 'en')}",
            "This certificate is no longer valid.",
            "Holder A. S.",
            "Only initials are shown",
        ],
        ("not_found", "sv"): [
            "Hittades inte",
            "Inget certifikat med detta id har utfärdats här.",
            f"Certifikat-id {unknown_id}",
        ],
        ("not_found", "en"): [
            "Not found",
            "No certificate with this ID has been issued here.",
            f"Certificate ID {unknown_id}",
        ],
    }
    ids = {"valid": valid.certificate_id, "revoked": revoked.certificate_id, "not_found": unknown_id}
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def check(base_url: str, state: str, locale: str) -> None:
        screenshot = SCREENSHOTS / f"{state}-{locale}.png"
        screenshot.unlink(missing_ok=True)
        profile = tmp_path / f"profile-{state}-{locale}"
        page = open_in_chromium(chromium, f"{base_url}/verify/{ids[state]}", locale, screenshot, profile)
        assert page.lang == locale, (state, locale, page.text)
        for fact in expected[(state, locale)]:
            assert fact in page.text, f"{state}/{locale}: {fact!r} not in {page.text!r}"
        for private in ("example.se", "issued in error", "bertil", "Svensson" if state != "valid" else "@"):
            assert private not in page.text, f"{state}/{locale} shows {private!r}"
        assert png_size(screenshot) == WINDOW

    app = create_certificate_app(scenario.settings.model_copy(update={"run_workers": False}))
    # A browser start mostly waits: a few at once halve the test's time.
    with served(app) as server, ThreadPoolExecutor(max_workers=BROWSERS_AT_ONCE) as browsers:
        for done in [browsers.submit(check, server.url, state, locale) for state, locale in expected]:
            done.result()
