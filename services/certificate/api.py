"""HTTP API of the certificate service: upload, metadata, audited download, revoke, visibility."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import quote
from uuid import UUID

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError
from starlette.concurrency import run_in_threadpool

from services.booking.application import BookingApplication
from services.certificate.application import (
    CertificateApplication,
    can_read_certificate,
)
from services.certificate.booking_gateway import BookingGateway, BookingRefused, BookingUnavailable
from services.certificate.multipart import UploadForm, read_upload_form
from services.certificate.pdfcheck import PdfRejected
from services.certificate.projections import CertificateRegistry, RegisteredCertificate
from services.certificate.settings import CertificateSettings
from services.certificate.storage import (
    ObjectNotFound,
    ObjectStorage,
    StorageUnavailable,
    certificate_object_key,
)
from services.certificate.uploads import (
    CertificateIssuer,
    IssuedCertificate,
    StorageDown,
    UploadRefused,
    sanitise_file_name,
)
from services.certificate.verification import linkedin_add_url
from shared.auth import Principal, Role
from shared.errors import AppError, Forbidden, NotFound
from shared.feed import read_your_writes
from shared.http import POSITION_HEADER, CurrentPrincipal, MinPosition

log = logging.getLogger(__name__)

UPLOAD_PATH = "/v1/bookings/{booking_id}/certificate"
FILE_FIELD = "file"

CertificateState = Literal["valid", "revoked", "superseded"]


# --- request models ---------------------------------------------------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class UploadFields(Strict):
    """The text fields of the upload form (strings, so "true"/"false"/"1"/"0" are accepted)."""

    contains_results: bool = False


class ReasonIn(Strict):
    reason: Annotated[str, Field(min_length=1, max_length=1000)]


class VisibilityIn(Strict):
    public: StrictBool


UPLOAD_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {
                        FILE_FIELD: {"type": "string", "format": "binary", "description": "The certificate as a PDF"},
                        "contains_results": {
                            "type": "boolean",
                            "default": False,
                            "description": "The certificate shows grades or scores (needs the participant's consent)",
                        },
                    },
                }
            }
        },
    }
}


# --- response models --------------------------------------------------------------------------


class IssuedCertificateOut(BaseModel):
    certificate_id: UUID
    booking_id: UUID
    sha256: str
    size: int
    page_count: int
    file_name: str
    contains_results: bool
    certification_name: str
    issued_at: datetime
    state: CertificateState

    @classmethod
    def of(cls, issued: IssuedCertificate) -> IssuedCertificateOut:
        return cls(
            certificate_id=issued.certificate_id,
            booking_id=issued.booking_id,
            sha256=issued.sha256,
            size=issued.size,
            page_count=issued.page_count,
            file_name=issued.file_name,
            contains_results=issued.contains_results,
            certification_name=issued.certification_name,
            issued_at=issued.issued_at,
            state="valid",
        )


class CertificateOut(IssuedCertificateOut):
    revoked_at: datetime | None
    revocation_reason: str | None
    superseded_by: UUID | None
    holder_public: bool = Field(description="The participant lets verifiers see their full name")
    linkedin_add_url: str | None = Field(
        default=None, description="LinkedIn add-to-profile link for the holder; null unless the certificate is valid"
    )

    @classmethod
    def of_registered(cls, certificate: RegisteredCertificate, certificate_base_url: str) -> CertificateOut:
        described = cls.model_validate(certificate, from_attributes=True)
        return described.model_copy(update={"linkedin_add_url": linkedin_add_url(certificate, certificate_base_url)})


class RevocationOut(BaseModel):
    certificate_id: UUID
    booking_id: UUID
    state: Literal["revoked"]
    revocation_reason: str


class VisibilityOut(BaseModel):
    certificate_id: UUID
    booking_id: UUID
    holder_public: bool


# --- dependencies -----------------------------------------------------------------------------


def get_registry(request: Request) -> CertificateRegistry:
    return request.app.state.certificate_registry  # type: ignore[no-any-return]


def get_gateway(request: Request) -> BookingGateway:
    return request.app.state.booking_gateway  # type: ignore[no-any-return]


Registry = Annotated[CertificateRegistry, Depends(get_registry)]
Gateway = Annotated[BookingGateway, Depends(get_gateway)]


def find_certificate(
    request: Request, registry: CertificateRegistry, principal: Principal, certificate_id: str, min_position: int | None
) -> RegisteredCertificate:
    """The certificate if the caller may read it; 404 alike for unknown and not yours."""
    wait_for_registry(request, registry, min_position)
    certificate = registry.get(certificate_id)
    if certificate is None or not can_read_certificate(principal, certificate):
        raise NotFound("No such certificate.")
    return certificate


async def read_pdf_form(request: Request) -> UploadForm:
    """The multipart form of an upload or a file check: the PDF spooled to disk under the size limit."""
    settings: CertificateSettings = request.app.state.settings
    try:
        form = await read_upload_form(
            request.headers.get("content-type", ""),
            request.stream(),
            file_field=FILE_FIELD,
            spool_dir=settings.upload_spool_dir,
            max_file_bytes=settings.max_upload_bytes,
        )
    except PdfRejected as rejection:
        raise UploadRefused(rejection) from None
    return form


def wait_for_registry(request: Request, registry: CertificateRegistry, position: int | None) -> None:
    """Read-your-writes: `position` is an X-Event-Position the booking service returned."""
    read_your_writes(
        registry,
        request.app.state.booking_events,
        BookingApplication.name,
        position,
        request.app.state.settings.read_your_writes_timeout_s,
    )


def set_position(response: Response, position: int | None) -> None:
    """Pass this back as X-Min-Position to read your own write."""
    if position is not None:
        response.headers[POSITION_HEADER] = str(position)


def content_disposition(file_name: str) -> str:
    fallback = file_name.encode("ascii", "replace").decode("ascii").replace('"', "_").replace("\\", "_")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(file_name, safe='')}"


@asynccontextmanager
async def _booking_connections(app: FastAPI) -> AsyncIterator[None]:
    """Nested in the app's own lifespan, which made the gateway: closes its pooled connections first."""
    gateway: BookingGateway = app.state.booking_gateway
    async with gateway:
        yield


# --- routes -----------------------------------------------------------------------------------

certificates = APIRouter(tags=["certificates"], lifespan=_booking_connections)


@certificates.post(
    UPLOAD_PATH,
    status_code=201,
    response_model=IssuedCertificateOut,
    openapi_extra=UPLOAD_REQUEST_BODY,
    responses={
        409: {"description": "The booking cannot receive a certificate now (the message says why)"},
        413: {"description": "The file is larger than MAX_UPLOAD_BYTES"},
        415: {"description": "Not a PDF"},
        422: {"description": "A PDF that is damaged, encrypted or carries scripts or attachments"},
        503: {"description": "The booking service or the storage is unavailable; nothing was issued"},
    },
)
async def upload_certificate(
    request: Request, booking_id: UUID, principal: CurrentPrincipal, gateway: Gateway, response: Response
) -> IssuedCertificateOut:
    """Checks the file and, while it is inspected, asks the booking service; stores and records once both say yes.

    Bytes already issued are stored already: then the record alone asks the booking service.
    """
    if principal.role not in (Role.PROVIDER, Role.STAFF):
        raise Forbidden("Certificates are uploaded by the product's provider or by staff.")
    issuer: CertificateIssuer = request.app.state.certificate_issuer
    check = BookingCheck(gateway, request.headers["authorization"], booking_id)
    async with check.refusal_first():
        form = await read_pdf_form(request)
        with form.file:
            fields = parse_upload_fields(form.fields)
            stored = await issuer.holds(form.file)
            if not stored:
                check.ask(contains_results=fields.contains_results)
            facts = await issuer.inspect(form.file)
            await check.answered()
            issued = await issuer.issue(
                principal,
                booking_id,
                form.file,
                facts,
                sanitise_file_name(form.file_name),
                contains_results=fields.contains_results,
                stored=stored,
            )
    set_position(response, issued.position)
    return IssuedCertificateOut.of(issued)


class BookingCheck:
    """The booking service's check of an upload ("would you record it?"), asked at most once.

    Asked before a file is stored (so a refused upload stores nothing), and whenever the upload is
    refused for its own reasons (the form, the file): the booking service's refusal comes first,
    as if it had been asked before anything else.
    """

    def __init__(self, gateway: BookingGateway, authorization: str, booking_id: UUID) -> None:
        self._gateway = gateway
        self._authorization = authorization
        self._booking_id = booking_id
        self._answer: asyncio.Future[None] | None = None

    def ask(self, *, contains_results: bool) -> None:
        """Asks now, unless asked already; `answered` waits for the answer."""
        if self._answer is None:
            question = self._gateway.check_upload(
                self._authorization, self._booking_id, contains_results=contains_results
            )
            self._answer = asyncio.ensure_future(question)

    async def answered(self) -> None:
        """Raises the booking service's refusal, if it was asked and refused."""
        if self._answer is not None:
            await self._answer

    @asynccontextmanager
    async def refusal_first(self) -> AsyncIterator[None]:
        """A refusal of the block gives way to the booking service's; leaving otherwise drops an unanswered check."""
        try:
            yield
        except (BookingRefused, BookingUnavailable):
            raise  # the booking service answered (its check or its record): nothing to ask
        except (AppError, RequestValidationError):
            self.ask(contains_results=False)
            await self.answered()
            raise
        finally:
            if self._answer is not None:
                if not self._answer.done():
                    self._answer.cancel()
                elif not self._answer.cancelled():
                    self._answer.exception()  # seen: asyncio would otherwise log an answer nobody awaited


def parse_upload_fields(fields: dict[str, str]) -> UploadFields:
    try:
        return UploadFields.model_validate(fields)
    except ValidationError as error:
        raise RequestValidationError(error.errors()) from None


@certificates.get("/v1/bookings/{booking_id}/certificate", response_model=CertificateOut)
def active_certificate(
    request: Request,
    booking_id: UUID,
    principal: CurrentPrincipal,
    registry: Registry,
    min_position: MinPosition = None,
) -> CertificateOut:
    wait_for_registry(request, registry, min_position)
    certificate = registry.active_for_booking(str(booking_id))
    if certificate is None or not can_read_certificate(principal, certificate):
        raise NotFound("This booking has no valid certificate.")
    return CertificateOut.of_registered(certificate, request.app.state.settings.certificate_url)


@certificates.get("/v1/certificates/{certificate_id}", response_model=CertificateOut)
def get_certificate(
    request: Request,
    certificate_id: UUID,
    principal: CurrentPrincipal,
    registry: Registry,
    min_position: MinPosition = None,
) -> CertificateOut:
    """Any certificate, also a revoked or superseded one."""
    certificate = find_certificate(request, registry, principal, str(certificate_id), min_position)
    return CertificateOut.of_registered(certificate, request.app.state.settings.certificate_url)


@certificates.get(
    "/v1/certificates/{certificate_id}/file",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/pdf": {}}, "description": "The PDF as uploaded"}},
)
def download_certificate(
    request: Request,
    certificate_id: UUID,
    principal: CurrentPrincipal,
    registry: Registry,
    min_position: MinPosition = None,
) -> StreamingResponse:
    """Every download is recorded (who, when) before a byte is sent; no record, no file."""
    certificate = find_certificate(request, registry, principal, str(certificate_id), min_position)
    storage: ObjectStorage = request.app.state.object_storage
    try:
        stream = storage.open_stream(certificate_object_key(certificate.sha256))
    except ObjectNotFound:
        log.error("the file of certificate %s (sha256 %s) is missing", certificate_id, certificate.sha256)
        raise NotFound("The file of this certificate is not available.", code="file_missing") from None
    except StorageUnavailable as error:
        raise StorageDown from error
    try:
        application: CertificateApplication = request.app.state.certificate_app
        application.record_download(principal, certificate_id, UUID(certificate.booking_id))
    except BaseException:
        stream.close()
        raise
    return StreamingResponse(
        stream,
        media_type="application/pdf",
        headers={
            "Content-Length": str(certificate.size),
            "Content-Disposition": content_disposition(certificate.file_name),
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


@certificates.post("/v1/certificates/{certificate_id}/revoke", response_model=RevocationOut)
async def revoke_certificate(
    request: Request,
    certificate_id: UUID,
    body: ReasonIn,
    principal: CurrentPrincipal,
    registry: Registry,
    gateway: Gateway,
    response: Response,
    min_position: MinPosition = None,
) -> RevocationOut:
    """By the product's provider or staff; the booking service records CertificateRevoked."""
    certificate = await run_in_threadpool(
        find_certificate, request, registry, principal, str(certificate_id), min_position
    )
    booking_id = UUID(certificate.booking_id)
    position = await gateway.revoke(request.headers["authorization"], booking_id, certificate_id, body.reason)
    set_position(response, position)
    return RevocationOut(
        certificate_id=certificate_id, booking_id=booking_id, state="revoked", revocation_reason=body.reason
    )


@certificates.put("/v1/certificates/{certificate_id}/visibility", response_model=VisibilityOut)
async def change_visibility(
    request: Request,
    certificate_id: UUID,
    body: VisibilityIn,
    principal: CurrentPrincipal,
    registry: Registry,
    gateway: Gateway,
    response: Response,
    min_position: MinPosition = None,
) -> VisibilityOut:
    """By the participant: whether verifiers see their full name or only initials."""
    certificate = await run_in_threadpool(
        find_certificate, request, registry, principal, str(certificate_id), min_position
    )
    booking_id = UUID(certificate.booking_id)
    position = await gateway.change_visibility(
        request.headers["authorization"], booking_id, certificate_id, public=body.public
    )
    set_position(response, position)
    return VisibilityOut(certificate_id=certificate_id, booking_id=booking_id, holder_public=body.public)
