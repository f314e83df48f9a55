"""The display name of an uploaded certificate: never a path, never control characters, bounded."""

from __future__ import annotations

import pytest

from services.certificate.uploads import DEFAULT_FILE_NAME, MAX_FILE_NAME_LENGTH, sanitise_file_name


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Intyg Anna Svensson.pdf", "Intyg Anna Svensson.pdf"),
        ("../../etc/passwd", "passwd.pdf"),
        ("..\\..\\Windows\\system32\\intyg.pdf", "intyg.pdf"),
        ("/var/lib/certificates/intyg.PDF", "intyg.pdf"),
        ("intyg\x00\x07\r\n.pdf", "intyg.pdf"),
        ("intyg\u202egpj.pdf", "intyggpj.pdf"),  # a right-to-left override would disguise the extension
        ("  many   spaces  .pdf ", "many spaces.pdf"),
        ("intyg", "intyg.pdf"),
        ("intyg.docx", "intyg.docx.pdf"),
        ("Kursintyg för Åsa.pdf", "Kursintyg för Åsa.pdf"),
        ("", DEFAULT_FILE_NAME),
        (None, DEFAULT_FILE_NAME),
        ("..", DEFAULT_FILE_NAME),
        ("dir/", DEFAULT_FILE_NAME),
        (".pdf", "pdf.pdf"),
    ],
)
def test_file_names(raw: str | None, expected: str) -> None:
    assert sanitise_file_name(raw) == expected


def test_long_names_are_cut_keeping_the_extension() -> None:
    name = sanitise_file_name("å" * 1000 + ".pdf")
    assert len(name) == MAX_FILE_NAME_LENGTH
    assert name.endswith("å.pdf")
