"""The PDF checker remembers the facts of accepted files by SHA-256: the same bytes are not parsed
again. To see whether a file was parsed, a test replaces its bytes by garbage under the same hash:
only a remembered verdict accepts that."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from services.certificate.pdfcheck import PdfInspector, PdfRejected

CORPUS = Path(__file__).resolve().parents[3] / ".." / "shared" / "pdf-corpus"
PDF = (CORPUS / "001-trivial" / "minimal-document.pdf").read_bytes()
OTHER_PDF = (CORPUS / "004-pdflatex-4-pages" / "pdflatex-4-pages.pdf").read_bytes()
MAX_BYTES = 20_000_000


def sha256_of(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def garbage_like(content: bytes) -> bytes:
    return b"x" * len(content)


def inspector(remembered_files: int) -> PdfInspector:
    return PdfInspector(max_bytes=MAX_BYTES, workers=1, remembered_files=remembered_files)


def test_an_accepted_file_is_not_parsed_again(tmp_path: Path) -> None:
    path = tmp_path / "upload.pdf"
    path.write_bytes(PDF)
    with inspector(remembered_files=2) as checker:
        accepted = checker.inspect(path, sha256=sha256_of(PDF))
        path.write_bytes(garbage_like(PDF))

        assert checker.inspect(path, sha256=sha256_of(PDF)) == accepted
        with pytest.raises(PdfRejected, match="not a PDF"):
            checker.inspect(path)  # no hash given: parsed


def test_without_memory_every_file_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "upload.pdf"
    path.write_bytes(PDF)
    with inspector(remembered_files=0) as checker:
        checker.inspect(path, sha256=sha256_of(PDF))
        path.write_bytes(garbage_like(PDF))

        with pytest.raises(PdfRejected, match="not a PDF"):
            checker.inspect(path, sha256=sha256_of(PDF))


def test_the_least_recently_used_file_is_forgotten_first(tmp_path: Path) -> None:
    first, second, third = tmp_path / "first.pdf", tmp_path / "second.pdf", tmp_path / "third.pdf"
    first.write_bytes(PDF)
    second.write_bytes(OTHER_PDF)
    with inspector(remembered_files=1) as checker:
        checker.inspect(first, sha256=sha256_of(PDF))
        checker.inspect(second, sha256=sha256_of(OTHER_PDF))
        first.write_bytes(garbage_like(PDF))
        third.write_bytes(garbage_like(OTHER_PDF))

        assert checker.inspect(third, sha256=sha256_of(OTHER_PDF)).page_count == 4
        with pytest.raises(PdfRejected, match="not a PDF"):
            checker.inspect(first, sha256=sha256_of(PDF))


def test_refusals_and_files_of_another_size_are_checked_again(tmp_path: Path) -> None:
    path = tmp_path / "upload.pdf"
    claimed = sha256_of(PDF)
    with inspector(remembered_files=2) as checker:
        path.write_bytes(garbage_like(PDF))
        with pytest.raises(PdfRejected, match="not a PDF"):
            checker.inspect(path, sha256=claimed)
        path.write_bytes(PDF)
        assert checker.inspect(path, sha256=claimed).page_count == 1
        path.write_bytes(garbage_like(PDF) + b"x")

        with pytest.raises(PdfRejected, match="not a PDF"):
            checker.inspect(path, sha256=claimed)
