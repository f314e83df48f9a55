"""The PDF check of certificate uploads: the real-world corpus, refused files, spooling."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zipfile
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from pypdf import PdfWriter
from pypdf.actions import JavaScript, PageTrigger
from pypdf.generic import (
    ArrayObject,
    DecodedStreamObject,
    DictionaryObject,
    NameObject,
    NumberObject,
    RectangleObject,
    TextStringObject,
)

from services.certificate.pdfcheck import PdfInspector, PdfRejected, spool_upload

CORPUS = Path(__file__).resolve().parents[3] / ".." / "shared" / "pdf-corpus"
CORPUS_ENTRIES = json.loads((CORPUS / "files.json").read_text())["data"]
REFUSED_CORPUS_FILES = {
    "005-libreoffice-writer-password/libreoffice-writer-password.pdf": "pdf_encrypted",
    "025-attachment/with-attachment.pdf": "pdf_embedded_files",
}
GOOD_FILE = CORPUS / "001-trivial" / "minimal-document.pdf"
MAX_BYTES = 20_000_000


@pytest.fixture(scope="module")
def inspector() -> Iterator[PdfInspector]:
    with PdfInspector(max_bytes=MAX_BYTES) as inspector:
        yield inspector


def assert_refused(inspector: PdfInspector, path: Path, code: str, http_status: int = 422) -> None:
    with pytest.raises(PdfRejected) as refusal:
        inspector.inspect(path)
    assert (refusal.value.code, refusal.value.http_status) == (code, http_status)
    # A refusal costs nothing lasting: the next upload is checked as usual.
    assert inspector.inspect(GOOD_FILE).page_count == 1


# --- the real-world corpus -------------------------------------------------------------------


def corpus_params() -> list[object]:
    return [
        pytest.param(
            entry,
            id=entry["path"],
            marks=()
            if (CORPUS / entry["path"]).is_file()
            else pytest.mark.skip(reason="listed in files.json but absent from the corpus"),
        )
        for entry in CORPUS_ENTRIES
    ]


def test_files_json_lists_every_corpus_pdf() -> None:
    listed = {entry["path"] for entry in CORPUS_ENTRIES}
    on_disk = {path.relative_to(CORPUS).as_posix() for path in CORPUS.rglob("*.pdf")}
    assert on_disk <= listed


@pytest.mark.parametrize("entry", corpus_params())
def test_corpus_file(inspector: PdfInspector, entry: dict) -> None:
    path = CORPUS / entry["path"]
    refusal = REFUSED_CORPUS_FILES.get(entry["path"])
    if refusal:
        assert_refused(inspector, path, refusal)
        return
    data = path.read_bytes()
    facts = inspector.inspect(path)
    assert facts.page_count == entry["pages"]
    assert facts.size == len(data)
    assert facts.sha256 == hashlib.sha256(data).hexdigest()


# --- files that are not PDFs, or not whole ---------------------------------------------------


def png_bytes() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0\0")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("certificate.pdf", GOOD_FILE.read_bytes())
    return buffer.getvalue()


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(png_bytes(), id="png"),
        pytest.param(zip_bytes(), id="zip-holding-a-pdf"),
        pytest.param(b"", id="empty"),
        pytest.param(b"<html><body>%PDF-1.7</body></html>", id="html"),
        pytest.param(b"\xef\xbb\xbf" + GOOD_FILE.read_bytes(), id="pdf-after-a-byte-order-mark"),
    ],
)
def test_not_a_pdf(inspector: PdfInspector, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "certificate.pdf"
    path.write_bytes(content)
    assert_refused(inspector, path, "not_a_pdf", 415)


def test_truncated_pdf(inspector: PdfInspector, tmp_path: Path) -> None:
    data = GOOD_FILE.read_bytes()
    path = tmp_path / "truncated.pdf"
    path.write_bytes(data[: len(data) // 2])
    assert_refused(inspector, path, "pdf_unreadable")


def test_larger_than_the_limit(inspector: PdfInspector, tmp_path: Path) -> None:
    path = tmp_path / "large.pdf"
    with path.open("wb") as file:
        file.write(GOOD_FILE.read_bytes())
        file.truncate(MAX_BYTES + 1)
    assert_refused(inspector, path, "file_too_large", 413)


def test_too_large_message_names_the_limit() -> None:
    assert "20 MB" in PdfRejected.file_too_large(20_000_000).message
    assert "2.5 MB" in PdfRejected.file_too_large(2_500_000).message


# --- documents pypdf writes, with content a certificate may not carry ------------------------


def dictionary(**entries: object) -> DictionaryObject:
    return DictionaryObject({NameObject(f"/{key}"): value for key, value in entries.items()})


def script() -> DictionaryObject:
    return dictionary(S=NameObject("/JavaScript"), JS=TextStringObject("app.alert('hi')"))


def launch() -> DictionaryObject:
    return dictionary(S=NameObject("/Launch"), F=TextStringObject("calc.exe"))


def annotation(subtype: str, **entries: object) -> DictionaryObject:
    box = RectangleObject((0, 0, 50, 50))
    return dictionary(Type=NameObject("/Annot"), Subtype=NameObject(subtype), Rect=box, **entries)


def link(**entries: object) -> DictionaryObject:
    return annotation("/Link", **entries)


def web_link() -> DictionaryObject:
    return dictionary(S=NameObject("/URI"), URI=TextStringObject("https://example.org/"))


def open_action_script(writer: PdfWriter) -> None:
    writer.root_object[NameObject("/OpenAction")] = script()


def document_script(writer: PdfWriter) -> None:
    writer.add_open_action(JavaScript("app.alert('hi')"))  # the /Names /JavaScript tree


def page_open_script(writer: PdfWriter) -> None:
    writer.pages[0].add_action(PageTrigger.OPEN, JavaScript("app.alert('hi')"))


def annotation_script(writer: PdfWriter) -> None:
    writer.add_annotation(0, link(A=web_link(), AA=dictionary(E=script())))


def script_after_a_web_link(writer: PdfWriter) -> None:
    action = web_link()
    action[NameObject("/Next")] = script()
    writer.add_annotation(0, link(A=action))


def form_field_script(writer: PdfWriter) -> None:
    field = dictionary(FT=NameObject("/Tx"), T=TextStringObject("name"), AA=dictionary(K=script()))
    writer.root_object[NameObject("/AcroForm")] = dictionary(Fields=ArrayObject([field]))


def rendition_script(writer: PdfWriter) -> None:
    action = dictionary(S=NameObject("/Rendition"), OP=NumberObject(0), JS=script()["/JS"])
    writer.add_annotation(0, link(A=action))


def three_d_scene_script(writer: PdfWriter) -> None:
    scene_script = DecodedStreamObject()
    scene_script.set_data(b"host.alert('hi')")
    scene = dictionary(Type=NameObject("/3D"), Subtype=NameObject("/U3D"), OnInstantiate=scene_script)
    writer.add_annotation(0, annotation("/3D", **{"3DD": scene}))


def launch_link(writer: PdfWriter) -> None:
    writer.add_annotation(0, link(A=launch()))


def launch_on_open(writer: PdfWriter) -> None:
    writer.root_object[NameObject("/OpenAction")] = launch()


def attachment(writer: PdfWriter) -> None:
    writer.add_attachment("grades.csv", b"name,grade\nAda,A\n")


def associated_file(writer: PdfWriter) -> None:
    embedded = DecodedStreamObject()
    embedded.set_data(b"name,grade\nAda,A\n")
    file_specification = dictionary(
        Type=NameObject("/Filespec"), F=TextStringObject("grades.csv"), EF=dictionary(F=embedded)
    )
    writer.root_object[NameObject("/AF")] = ArrayObject([file_specification])


def file_attachment_annotation(writer: PdfWriter) -> None:
    writer.add_annotation(0, annotation("/FileAttachment", FS=TextStringObject("grades.csv")))


def written_pdf(tmp_path: Path, change: Callable[[PdfWriter], None]) -> Path:
    writer = PdfWriter()
    writer.add_blank_page(595, 842)
    change(writer)
    path = tmp_path / "certificate.pdf"
    writer.write(path)
    return path


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (open_action_script, "pdf_javascript"),
        (document_script, "pdf_javascript"),
        (page_open_script, "pdf_javascript"),
        (annotation_script, "pdf_javascript"),
        (script_after_a_web_link, "pdf_javascript"),
        (form_field_script, "pdf_javascript"),
        (rendition_script, "pdf_javascript"),
        (three_d_scene_script, "pdf_javascript"),
        (launch_link, "pdf_launch_action"),
        (launch_on_open, "pdf_launch_action"),
        (attachment, "pdf_embedded_files"),
        (associated_file, "pdf_embedded_files"),
        (file_attachment_annotation, "pdf_embedded_files"),
    ],
    ids=lambda value: value.__name__ if callable(value) else value,
)
def test_refused_content(
    inspector: PdfInspector, tmp_path: Path, change: Callable[[PdfWriter], None], code: str
) -> None:
    assert_refused(inspector, written_pdf(tmp_path, change), code)


def test_web_links_are_fine(inspector: PdfInspector, tmp_path: Path) -> None:
    path = written_pdf(tmp_path, lambda writer: writer.add_annotation(0, link(A=web_link())))
    assert inspector.inspect(path).page_count == 1


def test_zero_pages(inspector: PdfInspector, tmp_path: Path) -> None:
    path = tmp_path / "empty.pdf"
    PdfWriter().write(path)
    assert_refused(inspector, path, "pdf_no_pages")


# --- spooling an upload to disk --------------------------------------------------------------


async def in_chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.anyio
async def test_spool_upload_writes_and_hashes(tmp_path: Path) -> None:
    data = GOOD_FILE.read_bytes()
    spooled = await spool_upload(in_chunks(data, 4096), tmp_path, MAX_BYTES)
    with spooled:
        assert spooled.path.parent == tmp_path
        assert spooled.path.read_bytes() == data
        assert (spooled.sha256, spooled.size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert not spooled.path.exists()


@pytest.mark.anyio
async def test_spool_upload_stops_reading_past_the_limit(tmp_path: Path) -> None:
    chunks_read = 0

    async def long_upload() -> AsyncIterator[bytes]:
        nonlocal chunks_read
        for _ in range(100):  # 100 MB on offer; a spooler that ignores the limit still ends
            chunks_read += 1
            yield b"\0" * 1_000_000

    with pytest.raises(PdfRejected) as refusal:
        await spool_upload(long_upload(), tmp_path, 20_000_000)
    assert (refusal.value.code, refusal.value.http_status) == ("file_too_large", 413)
    assert chunks_read == 21  # the 21st megabyte is the first one over the limit
    assert list(tmp_path.iterdir()) == []


@pytest.mark.anyio
async def test_spool_upload_keeps_no_file_of_a_broken_upload(tmp_path: Path) -> None:
    async def broken_upload() -> AsyncIterator[bytes]:
        yield b"%PDF-1.7\n"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await spool_upload(broken_upload(), tmp_path, MAX_BYTES)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.anyio
async def test_spooled_upload_is_inspected(inspector: PdfInspector, tmp_path: Path) -> None:
    data = GOOD_FILE.read_bytes()
    with await spool_upload(in_chunks(data, 65536), tmp_path / "uploads", MAX_BYTES) as spooled:
        facts = inspector.inspect(spooled.path, sha256=spooled.sha256)
    assert (facts.sha256, facts.size, facts.page_count) == (hashlib.sha256(data).hexdigest(), len(data), 1)
