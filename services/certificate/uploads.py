"""Issuing a certificate: check the spooled PDF, store it content-addressed, record it on the booking.

The file is stored before the booking service records it, so a failure in between leaves a stored
object that no certificate references. Objects are shared by every certificate with the same
bytes, so one is deleted only when no certificate references it and no other upload of the same
bytes is under way (an upload intent, kept for the grace period); the sweep removes the rest.
An upload whose intent began just after that check may have found the object still there: the
deleting upload checks again after the delete and puts the bytes back if so.

Bytes a certificate already references are not stored again (no put, no intent): such an object
is never deleted, neither by a refused upload nor by the sweep, so it is there for the record.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from anyio import to_thread

from services.booking.projections import iso
from services.certificate.booking_gateway import BookingGateway, BookingRefused, BookingUnavailable
from services.certificate.pdfcheck import PdfFacts, PdfInspector, PdfRejected, SpooledFile
from services.certificate.projections import CertificateRegistry
from services.certificate.storage import ObjectStorage, StorageUnavailable, certificate_object_key
from shared.auth import Principal, Role
from shared.errors import AppError, ServiceUnavailable
from shared.views import SqlStore

log = logging.getLogger(__name__)

MAX_FILE_NAME_LENGTH = 120
DEFAULT_FILE_NAME = "certificate.pdf"
_PATH_SEPARATORS = re.compile(r"[/\\]")


def sanitise_file_name(raw: str | None) -> str:
    """A name to show and offer for download: the last path segment, printable, bounded, ending in .pdf.

    Never used to find the file (objects are keyed by content hash).
    """
    name = _PATH_SEPARATORS.split(unicodedata.normalize("NFC", raw or ""))[-1]
    # Category C: control and format characters (e.g. right-to-left overrides that disguise an extension).
    name = "".join(ch for ch in name if not unicodedata.category(ch).startswith("C"))
    name = " ".join(name.split()).strip(" .")
    stem = name[:-4] if name.lower().endswith(".pdf") else name
    stem = stem[: MAX_FILE_NAME_LENGTH - 4].rstrip(" .")
    return f"{stem}.pdf" if stem else DEFAULT_FILE_NAME


class UploadRefused(AppError):
    """The file is not an acceptable certificate; status and code come from the PDF check."""

    def __init__(self, rejection: PdfRejected) -> None:
        super().__init__(rejection.message, code=rejection.code)
        self.status_code = rejection.http_status


class StorageDown(ServiceUnavailable):
    code = "storage_unavailable"

    def __init__(self) -> None:
        super().__init__("The certificate storage is unavailable; retry shortly.", headers={"Retry-After": "1"})


class UploadIntents(SqlStore):
    """Uploads between storing their file and the registry knowing their certificate."""

    tables = (
        "CREATE TABLE IF NOT EXISTS certificate_upload_intents ("
        " certificate_id TEXT PRIMARY KEY, sha256 TEXT NOT NULL, started_at TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS certificate_upload_intents_sha256"
        " ON certificate_upload_intents (sha256, started_at)",
    )

    def begin(self, certificate_id: str, sha256: str, at: datetime) -> None:
        with self._cursor(commit=True) as cursor:
            self.execute(
                cursor,
                "INSERT INTO certificate_upload_intents (certificate_id, sha256, started_at)"
                " VALUES (:id, :sha256, :at)",
                {"id": certificate_id, "sha256": sha256, "at": iso(at)},
            )

    def forget(self, certificate_id: str) -> None:
        with self._cursor(commit=True) as cursor:
            self.execute(
                cursor, "DELETE FROM certificate_upload_intents WHERE certificate_id = :id", {"id": certificate_id}
            )

    def is_claimed(self, sha256: str, since: datetime) -> bool:
        row = self.fetch_one(
            "SELECT 1 AS found FROM certificate_upload_intents WHERE sha256 = :sha256 AND started_at >= :since LIMIT 1",
            {"sha256": sha256, "since": iso(since)},
        )
        return row is not None

    def prune(self, before: datetime) -> None:
        with self._cursor(commit=True) as cursor:
            self.execute(
                cursor, "DELETE FROM certificate_upload_intents WHERE started_at < :before", {"before": iso(before)}
            )


def uploaded_by(uploader: Principal) -> dict[str, Any]:
    """Who uploads, as the booking service records it; a provider (whose token always names its
    provider_id) may only upload to that provider's bookings, so the record also checks access."""
    if uploader.role is Role.PROVIDER:
        return {"id": uploader.sub, "role": uploader.role.value, "provider_id": uploader.provider_id}
    return {"id": uploader.sub, "role": uploader.role.value}


@dataclass(frozen=True)
class IssuedCertificate:
    certificate_id: UUID
    booking_id: UUID
    sha256: str
    size: int
    page_count: int
    file_name: str
    contains_results: bool
    certification_name: str
    issued_at: datetime
    position: int | None


class CertificateIssuer:
    """The part of an upload after the file is spooled: inspect it, then store, record, clean up on failure."""

    def __init__(
        self,
        *,
        storage: ObjectStorage,
        inspector: PdfInspector,
        intents: UploadIntents,
        registry: CertificateRegistry,
        booking: BookingGateway,
        grace: timedelta,
    ) -> None:
        self._storage = storage
        self._inspector = inspector
        self._intents = intents
        self._registry = registry
        self._booking = booking
        self._grace = grace

    async def holds(self, file: SpooledFile) -> bool:
        """A certificate was issued with these bytes: their object is stored, and stays (see the module doc)."""
        return await to_thread.run_sync(self._registry.references, file.sha256)

    async def issue(
        self,
        uploader: Principal,
        booking_id: UUID,
        file: SpooledFile,
        facts: PdfFacts,
        file_name: str,
        *,
        contains_results: bool,
        stored: bool,
    ) -> IssuedCertificate:
        """Stores (unless `stored`: see `holds`) and records a file that passed `inspect` (with `facts`).

        A file to store must have passed the booking service's check; the record applies the
        check's rules again (also the uploader's access to the booking: see `uploaded_by`).
        """
        certificate_id = uuid4()  # decided here and random: certificate ids cannot be guessed
        key = certificate_object_key(facts.sha256)
        if not stored:
            try:
                await to_thread.run_sync(self._claim_and_store, str(certificate_id), key, file)
            except StorageUnavailable as error:
                await to_thread.run_sync(self._intents.forget, str(certificate_id))
                log.warning("certificate storage unavailable: %s", error)
                raise StorageDown from error
        record = {
            "certificate_id": str(certificate_id),
            "sha256": facts.sha256,
            "size": facts.size,
            "page_count": facts.page_count,
            "file_name": file_name,
            "contains_results": contains_results,
            "uploaded_by": uploaded_by(uploader),
        }
        try:
            recorded = await self._booking.record_upload(booking_id, record)
        except BookingRefused:
            if not stored:
                await to_thread.run_sync(self._discard, str(certificate_id), key, file)
            raise
        except BookingUnavailable as failure:
            # If the request may have been recorded after all, the sweep decides once the registry knows.
            if not (stored or failure.maybe_done):
                await to_thread.run_sync(self._discard, str(certificate_id), key, file)
            raise
        return _issued(booking_id, recorded.summary, recorded.position)

    async def inspect(self, file: SpooledFile) -> PdfFacts:
        """The PDF checks of an upload; POST /verify applies the same ones."""
        # Known bytes are answered here: a hop to a thread and back costs milliseconds under load.
        known = self._inspector.remembered(file.sha256, file.size)
        if known is not None:
            return known
        try:
            return await to_thread.run_sync(functools.partial(self._inspector.inspect, file.path, sha256=file.sha256))
        except PdfRejected as rejection:
            raise UploadRefused(rejection) from None

    def _claim_and_store(self, certificate_id: str, key: str, file: SpooledFile) -> None:
        """The intent goes first: from then on a failed upload of the same bytes leaves the file (or puts it back)."""
        self._intents.begin(certificate_id, file.sha256, datetime.now(UTC))
        self._store(key, file)

    def _store(self, key: str, file: SpooledFile) -> None:
        self._storage.put_file(key, file.path, size=file.size, sha256=file.sha256)

    def _discard(self, certificate_id: str, key: str, file: SpooledFile) -> None:
        """The booking service did not record the certificate: remove the file unless someone else needs it."""
        self._intents.forget(certificate_id)
        if self._is_needed(file.sha256):
            return
        try:
            self._storage.delete(key)
        except StorageUnavailable:
            log.warning("could not remove unrecorded file %s; the sweep will", key)
            return
        # An upload of the same bytes that began after the check above stored nothing if it found
        # the object still there, and was never told of the delete: it needs the bytes back.
        if self._is_needed(file.sha256):
            try:
                self._store(key, file)
            except StorageUnavailable:
                log.exception("could not put back the file %s, deleted while another upload needed it", key)

    def _is_needed(self, sha256: str) -> bool:
        since = datetime.now(UTC) - self._grace
        return self._registry.references(sha256) or self._intents.is_claimed(sha256, since)


def _issued(booking_id: UUID, summary: dict[str, Any], position: int | None) -> IssuedCertificate:
    return IssuedCertificate(
        certificate_id=UUID(summary["certificate_id"]),
        booking_id=booking_id,
        sha256=summary["sha256"],
        size=summary["size"],
        page_count=summary["page_count"],
        file_name=summary["file_name"],
        contains_results=summary["contains_results"],
        certification_name=summary["certification_name"],
        issued_at=datetime.fromisoformat(summary["issued_at"]),
        position=position,
    )
