"""What an uploaded certificate PDF must be, and the check of one file against it.

This module runs inside the worker processes of `pdfcheck.PdfInspector`; on its own it has no
time or memory bounds, so callers go through the inspector, not through `check_pdf`.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pypdf import PdfReader
from pypdf.errors import LimitReachedError
from pypdf.filters import decode_stream_data
from pypdf.generic import ArrayObject, DictionaryObject, IndirectObject, StreamObject

PDF_HEADER = b"%PDF-"

# Subtrees that hold no actions or attachments a viewer runs or offers: page content and its
# resources (fonts, images, colour spaces), XMP metadata, the tag structure and named
# destinations. They are most of a long document's objects, so the walk skips them.
INERT_KEYS = frozenset({"/Contents", "/Resources", "/Metadata", "/StructTreeRoot", "/Dests"})

# code -> (HTTP status, what a training provider reads: the problem and what to do about it)
REFUSALS: dict[str, tuple[int, str]] = {
    "file_too_large": (
        413,
        "The file is larger than {limit}, the largest certificate we accept. Make the PDF "
        "smaller, for example by lowering the image resolution, and upload it again.",
    ),
    "not_a_pdf": (
        415,
        "The file is not a PDF. Save or export the certificate as a PDF and upload that file.",
    ),
    "pdf_unreadable": (
        422,
        "The PDF is damaged or not valid, so it cannot be read. Export the certificate to PDF "
        "again and upload the new file.",
    ),
    "pdf_no_pages": (
        422,
        "The PDF has no pages. Upload a PDF that shows the certificate.",
    ),
    "pdf_encrypted": (
        422,
        "The PDF is password-protected or encrypted. Save it without a password or protection and upload it again.",
    ),
    "pdf_javascript": (
        422,
        "The PDF contains JavaScript, which certificates may not contain. Export it to PDF again "
        "without scripts or interactive form actions and upload the new file.",
    ),
    "pdf_launch_action": (
        422,
        "The PDF contains an action that starts a program or opens a file, which certificates "
        "may not contain. Export it to PDF again without such actions and upload the new file.",
    ),
    "pdf_embedded_files": (
        422,
        "The PDF contains attached or embedded files, which certificates may not contain. Remove "
        "the attachments (or export the certificate to PDF again) and upload the new file.",
    ),
    "pdf_too_complex": (
        422,
        "The PDF is too complex to check safely: it is nested too deeply, expands to too much "
        "data or takes too long to read. Export the certificate to a simpler PDF, for example "
        'with "Print to PDF", and upload that file.',
    ),
}


class PdfRejected(Exception):
    """A file refused as a certificate, with a stable code and a message for the uploader.

    Raise the size refusal through `file_too_large`, which puts the limit in the message.
    """

    def __init__(self, code: str, message: str | None = None) -> None:
        self.http_status, default_message = REFUSALS[code]
        self.code = code
        self.message = message or default_message
        super().__init__(self.message)

    def __reduce__(self) -> tuple[Any, ...]:
        # Refusals cross the process boundary from the worker; keep both fields when pickled.
        return (type(self), (self.code, self.message))

    @classmethod
    def file_too_large(cls, max_bytes: int) -> PdfRejected:
        limit = f"{max_bytes / 1_000_000:.1f}".rstrip("0").rstrip(".") + " MB"
        return cls("file_too_large", REFUSALS["file_too_large"][1].format(limit=limit))


@dataclass(frozen=True)
class PdfFacts:
    sha256: str
    size: int
    page_count: int


def check_pdf(path: Path, sha256: str | None = None) -> PdfFacts:
    """Read the file at `path` and return its facts, or raise PdfRejected saying why not."""
    data = path.read_bytes()
    if not data.startswith(PDF_HEADER):
        raise PdfRejected("not_a_pdf")
    try:
        # Strict: a broken cross-reference table is refused rather than guessed at, so what we
        # check is what a viewer shows, not one of several possible reconstructions.
        page_count = _check_document(PdfReader(io.BytesIO(data), strict=True))
    except PdfRejected:
        raise
    except Exception as error:  # pypdf raises many exception types on malformed input
        exhaustion = _resource_exhaustion(error)
        if exhaustion is not None:
            raise PdfRejected("pdf_too_complex") from exhaustion
        raise PdfRejected("pdf_unreadable") from error
    return PdfFacts(
        sha256=sha256 or hashlib.sha256(data).hexdigest(),
        size=len(data),
        page_count=page_count,
    )


def _resource_exhaustion(error: BaseException) -> BaseException | None:
    """The limit hit (pypdf's own, recursion or memory) behind `error`, which pypdf may wrap."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, (LimitReachedError, RecursionError, MemoryError)):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _check_document(reader: PdfReader) -> int:
    if reader.is_encrypted:
        raise PdfRejected("pdf_encrypted")
    page_count = len(reader.pages)
    if page_count == 0:
        raise PdfRejected("pdf_no_pages")
    refusal = _find_active_content(reader.trailer.raw_get("/Root"))
    if refusal:
        raise PdfRejected(refusal)
    for page in reader.pages:
        _decode_contents(page.get("/Contents"))
    return page_count


def _find_active_content(root: Any) -> str | None:
    """Walk the objects reachable from the document catalog (but for INERT_KEYS subtrees) for
    scripts, launch actions or embedded files, and return the code of the first one found.

    Iterative, and each indirect object is visited once, so deep or cyclic structures cannot
    exhaust the stack or loop. Stream data is not decoded here.
    """
    visited: set[tuple[int, int]] = set()
    pending = [root]
    while pending:
        item = pending.pop()
        if isinstance(item, IndirectObject):
            reference = (item.idnum, item.generation)
            if reference not in visited:
                visited.add(reference)
                pending.append(item.get_object())
        elif isinstance(item, DictionaryObject):
            refusal = _refusal_for(item)
            if refusal:
                return refusal
            pending.extend(value for key, value in item.items() if key not in INERT_KEYS and _may_hold_objects(value))
        elif isinstance(item, ArrayObject):
            pending.extend(value for value in item if _may_hold_objects(value))
    return None


def _may_hold_objects(value: Any) -> bool:
    return isinstance(value, (IndirectObject, DictionaryObject, ArrayObject))


def _refusal_for(dictionary: DictionaryObject) -> str | None:
    # /JS holds the script of a JavaScript action (and of a rendition action, which may have
    # one); /OnInstantiate holds a 3D scene's script.
    if "/JS" in dictionary or "/OnInstantiate" in dictionary:
        return "pdf_javascript"
    if _name(dictionary, "/S") == "/Launch":
        return "pdf_launch_action"
    # /EF is where a file specification carries an embedded file, whether it is listed in the
    # /EmbeddedFiles name tree, attached to an annotation or associated (/AF) with any object.
    if "/EF" in dictionary or _name(dictionary, "/Subtype") == "/FileAttachment":
        return "pdf_embedded_files"
    return None


def _name(dictionary: DictionaryObject, key: str) -> Any:
    value = dictionary.get(key)
    return value.get_object() if isinstance(value, IndirectObject) else value


def _decode_contents(contents: Any) -> None:
    """Decompress a page's content streams, so a decompression bomb hits pypdf's output limits."""
    resolved = contents.get_object() if contents is not None else None
    streams = resolved if isinstance(resolved, ArrayObject) else [resolved]
    for stream in streams:
        stream = stream.get_object() if isinstance(stream, IndirectObject) else stream
        # Unfiltered streams are stored as they are: nothing to expand.
        if isinstance(stream, StreamObject) and "/Filter" in stream:
            decode_stream_data(stream)
