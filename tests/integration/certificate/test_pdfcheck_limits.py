"""Hostile PDFs against the checker's worker processes: nesting, bombs, broken cross-references,
files that take too long or too much memory, and fuzzing. The server side must only ever see
PdfRejected, within the deadline, and keep working afterwards."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.certificate.pdfcheck import PdfFacts, PdfInspector, PdfRejected

CORPUS = Path(__file__).resolve().parents[3] / ".." / "shared" / "pdf-corpus"
GOOD_FILE = CORPUS / "001-trivial" / "minimal-document.pdf"
LONG_FILE = CORPUS / "009-pdflatex-geotopo" / "GeoTopo-komprimiert.pdf"
MUTATED_FILE = CORPUS / "002-trivial-libre-office-writer" / "002-trivial-libre-office-writer.pdf"
TIMEOUT_S = 2.0
# Killing a worker that overran and forking its replacement, on a busy 2-core machine.
RESTART_ALLOWANCE_S = 1.5


@pytest.fixture(scope="module")
def inspector() -> Iterator[PdfInspector]:
    with PdfInspector(max_bytes=20_000_000, timeout_s=TIMEOUT_S) as inspector:
        yield inspector


def assert_refused(inspector: PdfInspector, path: Path, code: str) -> None:
    started = time.monotonic()
    with pytest.raises(PdfRejected) as refusal:
        inspector.inspect(path)
    assert refusal.value.code == code
    assert time.monotonic() - started < TIMEOUT_S + RESTART_ALLOWANCE_S
    assert inspector.inspect(GOOD_FILE).page_count == 1


def refusal_of(inspector: PdfInspector, path: Path) -> PdfRejected:
    with pytest.raises(PdfRejected) as refusal:
        inspector.inspect(path)
    return refusal.value


# --- raw PDF files, written byte by byte ------------------------------------------------------


def xref_table(offsets: list[int], start: int) -> bytes:
    entries = b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    return (
        b"xref\n0 %d\n0000000000 65535 f \n" % (len(offsets) + 1)
        + entries
        + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(offsets) + 1, start)
    )


def raw_pdf(
    page_entries: bytes = b"",
    content: bytes = b"BT /F1 12 Tf (Certificate) Tj ET",
    content_entries: bytes = b"",
    more_objects: tuple[bytes, ...] = (),
    cross_reference: Callable[[list[int], int], bytes] = xref_table,
) -> bytes:
    """A one-page PDF; objects 1-4 are catalog, page tree, page and content, then `more_objects`."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R " + page_entries + b" >>",
        b"<< /Length %d %s >>\nstream\n" % (len(content), content_entries) + content + b"\nendstream",
        *more_objects,
    ]
    pdf = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(pdf))
        pdf += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    return bytes(pdf + cross_reference(offsets, len(pdf)))


def zlib_bomb(gibibytes: int) -> bytes:
    """Deflate data that inflates to `gibibytes` GiB of zeros: one flushed block repeated."""
    compressor = zlib.compressobj(9)
    megabyte = bytes(2**20)
    head = compressor.compress(megabyte) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(megabyte) + compressor.flush(zlib.Z_FULL_FLUSH)
    return head + block * (gibibytes * 1024 - 1)


def garbage_xref(offsets: list[int], start: int) -> bytes:
    noise = random.Random(7).randbytes(600)
    return b"xref\n0 9\n" + noise + b"\ntrailer\n<< /Size 9 /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % start


def endless_xref_stream(offsets: list[int], start: int) -> bytes:
    """A cross-reference stream claiming a billion entries."""
    entries = b"".join(b"\x01" + offset.to_bytes(4, "big") + b"\0\0" for offset in offsets)
    return (
        b"%d 0 obj\n<< /Type /XRef /Size 1000000000 /Index [0 1000000000] /W [1 4 2] /Root 1 0 R "
        b"/Length %d >>\nstream\n"
        % (len(offsets) + 1, len(entries))
        + entries
        + b"\nendstream\nendobj\nstartxref\n%d\n%%%%EOF\n" % start
    )


def object_chain(length: int) -> tuple[bytes, ...]:
    """Objects 5, 6, ... each pointing to the next: cheap to write, slow to walk."""
    return (*(b"<< /Next %d 0 R >>" % (number + 1) for number in range(5, 5 + length - 1)), b"<< >>")


HOSTILE_FILES = {
    "nested-arrays": (
        raw_pdf(b"/Extra 5 0 R", more_objects=(b"[" * 100_000 + b"]" * 100_000,)),
        "pdf_too_complex",
    ),
    "nested-dictionaries": (
        raw_pdf(b"/Extra 5 0 R", more_objects=(b"<< /A " * 100_000 + b">>" * 100_000,)),
        "pdf_too_complex",
    ),
    "nested-arrays-in-the-page": (raw_pdf(b"/Extra " + b"[" * 100_000 + b"]" * 100_000), "pdf_too_complex"),
    "decompression-bomb-in-page-content": (
        raw_pdf(content=zlib_bomb(gibibytes=2), content_entries=b"/Filter /FlateDecode"),
        "pdf_too_complex",
    ),
    "endless-xref-stream": (raw_pdf(cross_reference=endless_xref_stream), "pdf_too_complex"),
    "garbage-xref": (raw_pdf(cross_reference=garbage_xref), "pdf_unreadable"),
    "startxref-past-the-end": (raw_pdf().replace(b"startxref\n", b"startxref\n9999"), "pdf_unreadable"),
    "object-pointing-at-itself": (raw_pdf(b"/Extra 5 0 R", more_objects=(b"5 0 R",)), "pdf_unreadable"),
    "script-behind-escaped-names": (
        raw_pdf(b"/AA << /O << /S /J#61vaScript /J#53 (app.alert(1)) >> >>"),
        "pdf_javascript",
    ),
}


@pytest.mark.parametrize(("content", "code"), HOSTILE_FILES.values(), ids=HOSTILE_FILES.keys())
def test_hostile_file(inspector: PdfInspector, tmp_path: Path, content: bytes, code: str) -> None:
    path = tmp_path / "hostile.pdf"
    path.write_bytes(content)
    assert_refused(inspector, path, code)


def test_raw_pdf_builder_makes_valid_files(inspector: PdfInspector, tmp_path: Path) -> None:
    # Each hostile file differs from this one only in its hostile part.
    path = tmp_path / "plain.pdf"
    path.write_bytes(raw_pdf(more_objects=object_chain(3)))
    assert inspector.inspect(path).page_count == 1


# --- deadlines and memory limits of the worker processes --------------------------------------


@pytest.fixture(scope="module")
def slow_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slow") / "chain.pdf"
    path.write_bytes(raw_pdf(b"/Extra 5 0 R", more_objects=object_chain(150_000)))
    return path


def test_overrunning_the_deadline(tmp_path: Path, slow_file: Path) -> None:
    with PdfInspector(max_bytes=20_000_000, timeout_s=0.3, workers=1) as hurried:
        started = time.monotonic()
        with pytest.raises(PdfRejected) as refusal:
            hurried.inspect(slow_file)
        assert refusal.value.code == "pdf_too_complex"
        assert time.monotonic() - started < 0.3 + RESTART_ALLOWANCE_S
        # The only worker was replaced, not lost.
        assert hurried.inspect(GOOD_FILE).page_count == 1


def test_out_of_memory(tmp_path: Path) -> None:
    path = tmp_path / "bomb.pdf"
    path.write_bytes(raw_pdf(content=zlib_bomb(gibibytes=1), content_entries=b"/Filter /FlateDecode"))
    # Too little memory for pypdf's own 75 MB inflate limit: the address-space limit stops it.
    with PdfInspector(max_bytes=20_000_000, max_memory_bytes=100 * 2**20, workers=1) as frugal:
        with pytest.raises(PdfRejected) as refusal:
            frugal.inspect(path)
        assert refusal.value.code == "pdf_too_complex"
        assert "MemoryError" in str(refusal.value.__cause__)
        assert frugal.inspect(GOOD_FILE).page_count == 1


def child_processes(parent: int) -> set[int]:
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # the process ended while we looked
        if int(fields[1]) == parent:
            children.add(int(stat.parent.name))
    return children


def test_a_killed_worker_is_replaced(slow_file: Path) -> None:
    def workers() -> set[int]:  # forked by the forkserver, a child of this process
        return {pid for server in child_processes(os.getpid()) for pid in child_processes(server)}

    workers_before = workers()
    with PdfInspector(max_bytes=20_000_000, timeout_s=30.0, workers=1) as lonely:
        (worker,) = workers() - workers_before
        outcome: list[PdfRejected] = []
        checking = threading.Thread(target=lambda: outcome.append(refusal_of(lonely, slow_file)))
        started = time.monotonic()
        checking.start()
        time.sleep(0.2)
        os.kill(worker, signal.SIGKILL)  # as the kernel's out-of-memory killer would
        checking.join()
        assert [refusal.code for refusal in outcome] == ["pdf_too_complex"]
        assert time.monotonic() - started < 5.0  # noticed at once, not at the 30 s deadline
        assert lonely.inspect(GOOD_FILE).page_count == 1


def test_a_stuck_worker_does_not_hold_up_the_others(slow_file: Path) -> None:
    with PdfInspector(max_bytes=20_000_000, timeout_s=1.0, workers=2) as shared:
        outcome: list[PdfRejected] = []
        slow = threading.Thread(target=lambda: outcome.append(refusal_of(shared, slow_file)))
        slow.start()
        time.sleep(0.1)  # let it take a worker
        durations = []
        while slow.is_alive():
            started = time.monotonic()
            assert shared.inspect(GOOD_FILE).page_count == 1
            durations.append(time.monotonic() - started)
        slow.join()
        assert [refusal.code for refusal in outcome] == ["pdf_too_complex"]
        # Checked one after another by the free worker, none waiting for the stuck one's deadline.
        assert len(durations) > 1 and max(durations) < 0.5


# --- fuzzing -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "fuzzed.pdf"


def outcome_of(inspector: PdfInspector, path: Path, content: bytes) -> PdfFacts | PdfRejected:
    path.write_bytes(content)
    started = time.monotonic()
    try:
        outcome: PdfFacts | PdfRejected = inspector.inspect(path)
    except PdfRejected as refusal:
        outcome = refusal
    assert time.monotonic() - started < TIMEOUT_S + RESTART_ALLOWANCE_S
    return outcome


FUZZ_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ_SETTINGS
@given(content=st.binary(max_size=4096) | st.binary(max_size=4096).map(lambda tail: b"%PDF-1.7\n" + tail))
def test_random_bytes(inspector: PdfInspector, fuzz_path: Path, content: bytes) -> None:
    outcome = outcome_of(inspector, fuzz_path, content)
    assert isinstance(outcome, PdfRejected)


@st.composite
def mutated_pdf(draw: st.DrawFn) -> bytes:
    data = bytearray(MUTATED_FILE.read_bytes())
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data) - 1))
        edit = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        if edit == "replace":
            data[position] = draw(st.integers(0, 255))
        elif edit == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        elif edit == "delete":
            del data[position : position + draw(st.integers(1, 64))]
        else:
            del data[position:]
        if not data:
            break
    return bytes(data)


@FUZZ_SETTINGS
@given(content=mutated_pdf())
def test_mutated_corpus_pdf(inspector: PdfInspector, fuzz_path: Path, content: bytes) -> None:
    outcome = outcome_of(inspector, fuzz_path, content)
    if isinstance(outcome, PdfFacts):
        assert outcome.page_count == 1 and outcome.size == len(content)
