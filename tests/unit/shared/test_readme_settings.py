"""The README's settings table lists exactly the variables the services read."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from services.booking.settings import BookingSettings
from services.certificate.settings import CertificateSettings
from services.notifier.settings import NotifierSettings

README = Path(__file__).resolve().parents[3] / "README.md"


def documented_variables() -> list[str]:
    """The names in the first column of the table under "## Settings", as often as they appear."""
    section = README.read_text().split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", row.split("|")[1])]


def test_every_setting_is_documented_and_nothing_else() -> None:
    read = {
        name.upper() for cls in (BookingSettings, CertificateSettings, NotifierSettings) for name in cls.model_fields
    }
    assert set(documented_variables()) == read


def test_each_setting_is_documented_once() -> None:
    assert [name for name, rows in Counter(documented_variables()).items() if rows > 1] == []
