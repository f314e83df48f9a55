"""Reads a multipart/form-data upload as it arrives: the file part goes straight to a spool file.

Starlette's form parser would first copy the whole file into a temporary file of its own; here
python-multipart's push parser hands the file's bytes to `spool_upload`, which hashes them and
stops at the size limit, while the small text fields are collected on the side.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from services.certificate.pdfcheck import SpooledFile, spool_upload
from shared.errors import Invalid, UnsupportedMediaType

MAX_FIELD_BYTES = 1000
MAX_PARTS = 10


@dataclass
class UploadForm:
    """The text fields and the spooled file (delete it with `with form.file:`)."""

    fields: dict[str, str]
    file: SpooledFile
    file_name: str


@dataclass(frozen=True)
class _PartStart:
    name: str
    file_name: str | None


@dataclass(frozen=True)
class _PartData:
    data: bytes


class _PartEnd:
    pass


_Event = _PartStart | _PartData | _PartEnd


@dataclass
class _Parts:
    """python-multipart's callbacks, turned into a list of part events per chunk written."""

    events: list[_Event] = field(default_factory=list)
    finished: bool = False
    _header_name: bytes = b""
    _header_value: bytes = b""
    _disposition: bytes = b""

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": lambda: self.events.append(_PartEnd()),
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._disposition = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise Invalid("Every form part needs a name.", code="invalid_multipart")
        file_name = options.get(b"filename")
        self.events.append(
            _PartStart(
                name=options[b"name"].decode("utf-8", "replace"),
                file_name=file_name.decode("utf-8", "replace") if file_name is not None else None,
            )
        )

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self.events.append(_PartData(bytes(data[start:end])))

    def _end(self) -> None:
        self.finished = True


async def read_upload_form(
    content_type: str, body: AsyncIterator[bytes], *, file_field: str, spool_dir: Path, max_file_bytes: int
) -> UploadForm:
    """Spools the `file_field` file part (PdfRejected past `max_file_bytes`) and collects the other fields."""
    fields: dict[str, str] = {}
    spooled: SpooledFile | None = None
    file_name = ""
    try:
        async with aclosing(_events(_boundary(content_type), body)) as events:
            async for start in events:
                if not isinstance(start, _PartStart) or len(fields) >= MAX_PARTS:
                    raise Invalid("The multipart body is malformed or has too many parts.", code="invalid_multipart")
                if start.file_name is None:
                    fields[start.name] = await _read_field(start.name, events)
                    continue
                if start.name != file_field or spooled is not None:
                    raise Invalid(f"Send one file, in the form field '{file_field}'.", code="unexpected_file")
                async with aclosing(_part_data(events)) as data:
                    spooled = await spool_upload(data, spool_dir, max_file_bytes)
                file_name = start.file_name
    except BaseException:
        if spooled is not None:
            spooled.path.unlink(missing_ok=True)
        raise
    if spooled is None:
        raise Invalid(f"Send the PDF as a file in the form field '{file_field}'.", code="file_missing")
    return UploadForm(fields=fields, file=spooled, file_name=file_name)


def _boundary(content_type: str) -> bytes:
    media_type, options = parse_options_header(content_type)
    if media_type != b"multipart/form-data":
        raise UnsupportedMediaType("Send the certificate as multipart/form-data.", code="multipart_required")
    boundary = options.get(b"boundary")
    if not boundary:
        raise Invalid("The multipart/form-data content type has no boundary.", code="invalid_multipart")
    return boundary


async def _events(boundary: bytes, body: AsyncIterator[bytes]) -> AsyncIterator[_Event]:
    parts = _Parts()
    parser = MultipartParser(boundary, parts.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in body:
            parser.write(chunk)
            for event in parts.events:
                yield event
            parts.events.clear()
        parser.finalize()
    except FormParserError:
        raise Invalid("The multipart body is malformed.", code="invalid_multipart") from None
    for event in parts.events:
        yield event
    if not parts.finished:
        raise Invalid("The multipart body ended before its closing boundary.", code="invalid_multipart")


async def _part_data(events: AsyncIterator[_Event]) -> AsyncIterator[bytes]:
    async for event in events:
        if isinstance(event, _PartEnd):
            return
        if isinstance(event, _PartData):
            yield event.data
    raise Invalid("The multipart body ended inside a part.", code="invalid_multipart")


async def _read_field(name: str, events: AsyncIterator[_Event]) -> str:
    value = bytearray()
    async with aclosing(_part_data(events)) as data:
        async for chunk in data:
            value += chunk
            if len(value) > MAX_FIELD_BYTES:
                raise Invalid(f"The form field '{name}' is too long.", code="invalid_multipart")
    return value.decode("utf-8", "replace")
