"""HTTP API of the booking service: request/response models and one router per resource."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from services.booking.application import BookingApplication, CommandResult
from services.booking.domain import (
    STATUS_LABELS,
    Actor,
    Booking,
    CertificateFile,
    Product,
    Provider,
    Status,
)
from services.booking.projections import BookingSummaries
from shared.auth import Principal, Role
from shared.errors import Invalid, NotFound
from shared.feed import read_your_writes
from shared.http import POSITION_HEADER, CurrentPrincipal, MinPosition
from shared.linkedin import add_to_profile_url

# No control characters in stored text: PostgreSQL cannot hold NUL, and names end up in mail
# headers, CSV and HTML. Free text (reasons, reviews) may have line breaks and tabs.
ONE_LINE = r"^[^\x00-\x1f\x7f]*$"
FREE_TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"

Name = Annotated[str, Field(min_length=1, max_length=200, pattern=ONE_LINE)]
Reason = Annotated[str, Field(min_length=1, max_length=1000, pattern=FREE_TEXT)]
LinkedInId = Annotated[str, Field(pattern=r"^[0-9]{1,20}$", description="LinkedIn company page id (digits)")]
Url = Annotated[str, Field(pattern=r"^https?://[^\s<>\"'\x00-\x1f\x7f]{1,2000}$", max_length=2000)]
Email = Annotated[
    str,
    Field(
        pattern=r"^[^@\s\x00-\x1f\x7f]{1,64}@[^@\s\x00-\x1f\x7f]{1,255}\.[^@\s\x00-\x1f\x7f]{1,63}$",
        max_length=320,
    ),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# --- request models ---------------------------------------------------------------------------


class ProviderIn(Strict):
    provider_id: UUID | None = None
    name: Name
    linkedin_organization_id: LinkedInId | None = None
    logo_url: Url | None = None


class LinkedInIn(Strict):
    organization_id: LinkedInId


class ProductIn(Strict):
    product_id: UUID | None = None
    provider_id: UUID
    title: Name


class CertificationIn(Strict):
    name: Name


class ParticipantIn(Strict):
    id: Name
    name: Name
    email: Email
    locale: Annotated[str, Field(pattern=r"^[a-z]{2}(-[A-Z]{2})?$")] = "en"


class BookingIn(Strict):
    booking_id: UUID | None = None
    product_id: UUID
    participant: ParticipantIn
    employer_id: Name | None = None


class ReasonIn(Strict):
    reason: Reason


class StatusIn(Strict):
    status: Status


class ConsentIn(Strict):
    given: StrictBool


class ReviewIn(Strict):
    rating: Annotated[StrictInt, Field(ge=1, le=5)]
    text: Annotated[str, Field(max_length=5000, pattern=FREE_TEXT)] | None = None


class ActorIn(Strict):
    id: Name
    role: Literal["provider", "staff"]


class UploaderIn(ActorIn):
    provider_id: UUID | None = Field(
        default=None,
        description=(
            "The provider the uploader acts for: when given, the booking must be theirs (else 404, as for the check)"
        ),
    )


class CertificateRecordIn(Strict):
    certificate_id: UUID
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    size: Annotated[StrictInt, Field(gt=0)]
    page_count: Annotated[StrictInt, Field(gt=0)]
    file_name: Annotated[str, Field(min_length=1, max_length=255, pattern=ONE_LINE)]
    contains_results: StrictBool
    uploaded_by: UploaderIn


class UploadCheckIn(Strict):
    contains_results: StrictBool


class VisibilityIn(Strict):
    public: StrictBool


# --- response models --------------------------------------------------------------------------


class ProviderOut(BaseModel):
    provider_id: UUID
    name: str
    linkedin_organization_id: str | None
    logo_url: str | None
    version: int

    @classmethod
    def of(cls, provider: Provider) -> ProviderOut:
        return cls(
            provider_id=provider.id,
            name=provider.name,
            linkedin_organization_id=provider.linkedin_organization_id,
            logo_url=provider.logo_url,
            version=provider.version,
        )


class ProductOut(BaseModel):
    product_id: UUID
    provider_id: UUID
    title: str
    certification_name: str | None
    version: int

    @classmethod
    def of(cls, product: Product) -> ProductOut:
        return cls(
            product_id=product.id,
            provider_id=product.provider_id,
            title=product.title,
            certification_name=product.certification_name,
            version=product.version,
        )


class Participant(BaseModel):
    id: str
    name: str
    email: str
    locale: str


class CertificateSummary(BaseModel):
    certificate_id: UUID
    sha256: str
    size: int
    page_count: int
    file_name: str
    contains_results: bool
    certification_name: str
    issued_at: datetime


class Review(BaseModel):
    rating: int
    text: str | None


class BookingOut(BaseModel):
    booking_id: UUID
    product_id: UUID
    provider_id: UUID
    participant: Participant
    employer_id: str | None
    state: str
    status: Status
    status_label: dict[str, str]
    version: int
    results_consent: bool
    review: Review | None
    certificate: CertificateSummary | None = Field(description="The active certificate, if any")

    @classmethod
    def of(cls, booking: Booking) -> BookingOut:
        active = booking.active_certificate
        return cls(
            booking_id=booking.id,
            product_id=booking.product_id,
            provider_id=booking.provider_id,
            participant=Participant(**booking.participant),
            employer_id=booking.employer_id,
            state=booking.state.value,
            status=booking.status,
            status_label=STATUS_LABELS[booking.status],
            version=booking.version,
            results_consent=booking.results_consent,
            review=Review(**booking.review) if booking.review else None,
            certificate=CertificateSummary(**active) if active else None,
        )

    @classmethod
    def of_row(cls, row: dict[str, Any]) -> BookingOut:
        status = Status(row["status"])
        return cls(
            booking_id=row["booking_id"],
            product_id=row["product_id"],
            provider_id=row["provider_id"],
            participant=Participant(**json.loads(row["participant"])),
            employer_id=row["employer_id"],
            state=row["state"],
            status=status,
            status_label=STATUS_LABELS[status],
            version=row["version"],
            results_consent=bool(row["results_consent"]),
            review=Review(**json.loads(row["review"])) if row["review"] else None,
            certificate=CertificateSummary(**json.loads(row["certificate"])) if row["certificate"] else None,
        )


class ReviewOut(BookingOut):
    linkedin_add_url: str | None = Field(description="Add-to-profile link when the certificate is valid")


class BookingPage(BaseModel):
    items: list[BookingOut]
    next_cursor: str | None


# --- dependencies -----------------------------------------------------------------------------


def get_app(request: Request) -> BookingApplication:
    return request.app.state.booking_app  # type: ignore[no-any-return]


def get_summaries(request: Request) -> BookingSummaries:
    return request.app.state.booking_summaries  # type: ignore[no-any-return]


# The dependencies are async: FastAPI runs a sync dependency in the thread pool, a round trip per request.
async def _app_dependency(request: Request) -> BookingApplication:
    return get_app(request)


async def _summaries_dependency(request: Request) -> BookingSummaries:
    return get_summaries(request)


App = Annotated[BookingApplication, Depends(_app_dependency)]
Summaries = Annotated[BookingSummaries, Depends(_summaries_dependency)]


def model_response(body: BaseModel, *, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """`body` as JSON, serialised once. FastAPI would validate a returned model again against the
    route's response_model (for a sync route, in a second thread-pool round trip); routes still
    declare their response_model, which documents the body."""
    return Response(body.model_dump_json(), status_code=status_code, media_type="application/json", headers=headers)


def command_response(result: CommandResult, body: BaseModel, *, status_code: int = 200) -> Response:
    """A command's answer. ETag: the version to send back as If-Match; X-Event-Position: the position
    to send back as X-Min-Position, to read one's own write."""
    headers = {"ETag": f'"{result.aggregate.version}"'}
    if result.position is not None:
        headers[POSITION_HEADER] = str(result.position)
    return model_response(body, status_code=status_code, headers=headers)


def wait_for_read_model(request: Request, summaries: BookingSummaries, position: int | None) -> None:
    read_your_writes(
        summaries,
        get_app(request).recorder,
        BookingApplication.name,
        position,
        request.app.state.settings.read_your_writes_timeout_s,
    )


def parse_if_match(if_match: str | None) -> int | None:
    if if_match is None:
        return None
    value = if_match.strip().removeprefix("W/").strip('"')
    if not (value.isascii() and value.isdigit()):
        raise Invalid('If-Match must be a booking version, e.g. "3".', code="invalid_if_match")
    return int(value)


# --- routers ----------------------------------------------------------------------------------

providers = APIRouter(prefix="/v1/providers", tags=["providers"])
products = APIRouter(prefix="/v1/products", tags=["products"])
bookings = APIRouter(prefix="/v1/bookings", tags=["bookings"])
internal = APIRouter(prefix="/internal/v1/bookings", tags=["internal"])


@providers.post("", status_code=201, response_model=ProviderOut)
def register_provider(body: ProviderIn, app: App, principal: CurrentPrincipal) -> Response:
    result = app.register_provider(
        principal,
        provider_id=body.provider_id,
        name=body.name,
        linkedin_organization_id=body.linkedin_organization_id,
        logo_url=body.logo_url,
    )
    return command_response(result, ProviderOut.of(result.aggregate), status_code=201)


@providers.put("/{provider_id}/linkedin", response_model=ProviderOut)
def link_linkedin(provider_id: UUID, body: LinkedInIn, app: App, principal: CurrentPrincipal) -> Response:
    result = app.link_linkedin_page(principal, provider_id, body.organization_id)
    return command_response(result, ProviderOut.of(result.aggregate))


@providers.get("/{provider_id}", response_model=ProviderOut)
def get_provider(provider_id: UUID, app: App, principal: CurrentPrincipal) -> Response:
    return model_response(ProviderOut.of(app.get_provider(provider_id)))


@products.post("", status_code=201, response_model=ProductOut)
def register_product(body: ProductIn, app: App, principal: CurrentPrincipal) -> Response:
    result = app.register_product(principal, product_id=body.product_id, provider_id=body.provider_id, title=body.title)
    return command_response(result, ProductOut.of(result.aggregate), status_code=201)


@products.put("/{product_id}/certification", response_model=ProductOut)
def define_certification(product_id: UUID, body: CertificationIn, app: App, principal: CurrentPrincipal) -> Response:
    result = app.define_certification(principal, product_id, body.name)
    return command_response(result, ProductOut.of(result.aggregate))


@products.get("/{product_id}", response_model=ProductOut)
def get_product(product_id: UUID, app: App, principal: CurrentPrincipal) -> Response:
    return model_response(ProductOut.of(app.get_product(product_id)))


@bookings.post("", status_code=201, response_model=BookingOut)
def request_booking(body: BookingIn, app: App, principal: CurrentPrincipal) -> Response:
    result = app.request_booking(
        principal,
        booking_id=body.booking_id,
        product_id=body.product_id,
        participant=body.participant.model_dump(),
        employer_id=body.employer_id,
    )
    return command_response(result, BookingOut.of(result.aggregate), status_code=201)


@bookings.post("/{booking_id}/accept", response_model=BookingOut)
def accept(booking_id: UUID, app: App, principal: CurrentPrincipal) -> Response:
    result = app.accept(principal, booking_id)
    return command_response(result, BookingOut.of(result.aggregate))


@bookings.post("/{booking_id}/decline", response_model=BookingOut)
def decline(booking_id: UUID, body: ReasonIn, app: App, principal: CurrentPrincipal) -> Response:
    result = app.decline(principal, booking_id, body.reason)
    return command_response(result, BookingOut.of(result.aggregate))


@bookings.post("/{booking_id}/cancel", response_model=BookingOut)
def cancel(booking_id: UUID, body: ReasonIn, app: App, principal: CurrentPrincipal) -> Response:
    result = app.cancel(principal, booking_id, body.reason)
    return command_response(result, BookingOut.of(result.aggregate))


@bookings.post(
    "/{booking_id}/status",
    response_model=BookingOut,
    responses={412: {"description": "If-Match names an older version"}},
)
def change_status(
    booking_id: UUID,
    body: StatusIn,
    app: App,
    principal: CurrentPrincipal,
    if_match: Annotated[str | None, Header(max_length=40)] = None,
) -> Response:
    result = app.change_status(principal, booking_id, body.status, expected_version=parse_if_match(if_match))
    return command_response(result, BookingOut.of(result.aggregate))


@bookings.post("/{booking_id}/consent", response_model=BookingOut)
def consent(booking_id: UUID, body: ConsentIn, app: App, principal: CurrentPrincipal) -> Response:
    result = app.set_results_consent(principal, booking_id, given=body.given)
    return command_response(result, BookingOut.of(result.aggregate))


@bookings.post("/{booking_id}/review", response_model=ReviewOut)
def review(request: Request, booking_id: UUID, body: ReviewIn, app: App, principal: CurrentPrincipal) -> Response:
    result = app.submit_review(principal, booking_id, body.rating, body.text)
    booking: Booking = result.aggregate
    out = ReviewOut(
        **BookingOut.of(booking).model_dump(),
        linkedin_add_url=linkedin_add_url(app, booking, request.app.state.settings.certificate_url),
    )
    return command_response(result, out)


def linkedin_add_url(app: BookingApplication, booking: Booking, certificate_base_url: str) -> str | None:
    active = booking.active_certificate
    if active is None:
        return None
    provider = app.get_provider(booking.provider_id)
    certificate_id = str(active["certificate_id"])
    return add_to_profile_url(
        certification_name=active["certification_name"],
        organization_id=provider.linkedin_organization_id,
        organization_name=provider.name,
        issued_at=active["issued_at"],
        cert_url=f"{certificate_base_url.rstrip('/')}/verify/{certificate_id}",
        cert_id=certificate_id,
    )


@bookings.get("/{booking_id}", response_model=BookingOut)
def get_booking(
    request: Request,
    booking_id: UUID,
    principal: CurrentPrincipal,
    summaries: Summaries,
    min_position: MinPosition = None,
) -> Response:
    wait_for_read_model(request, summaries, min_position)
    row = summaries.get(str(booking_id))
    if row is None or not row_visible_to(principal, row):
        raise NotFound("No such booking.")
    return model_response(BookingOut.of_row(row))


def row_visible_to(principal: Principal, row: dict[str, Any]) -> bool:
    return all(row[column] == value for column, value in scope_filter(principal).items())


def scope_filter(principal: Principal) -> dict[str, str]:
    """The columns that limit what a caller sees (empty: everything)."""
    match principal.role:
        case Role.PROVIDER:
            return {"provider_id": principal.provider_id or ""}
        case Role.PARTICIPANT:
            return {"participant_id": principal.sub}
        case Role.EMPLOYER:
            return {"employer_id": principal.employer_id or ""}
    return {}


@bookings.get("", response_model=BookingPage)
def list_bookings(
    request: Request,
    principal: CurrentPrincipal,
    summaries: Summaries,
    status: Status | None = None,
    product_id: UUID | None = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    min_position: MinPosition = None,
) -> Response:
    wait_for_read_model(request, summaries, min_position)
    filters = scope_filter(principal)
    if status is not None:
        filters["status"] = status.value
    if product_id is not None:
        filters["product_id"] = str(product_id)
    rows, next_cursor = summaries.page(filters=filters, cursor=cursor, limit=limit)
    return model_response(BookingPage(items=[BookingOut.of_row(r) for r in rows], next_cursor=next_cursor))


# --- internal: called by the certificate service ----------------------------------------------


@internal.post("/{booking_id}/certificates/check", status_code=204, response_class=Response)
def check_certificate_upload(booking_id: UUID, body: UploadCheckIn, app: App, principal: CurrentPrincipal) -> Response:
    """With the uploader's own token: would an upload be accepted? (before the file is stored)"""
    app.check_certificate_upload(principal, booking_id, contains_results=body.contains_results)
    return Response(status_code=204)


@internal.post("/{booking_id}/certificates", status_code=201, response_model=BookingOut)
def record_certificate(booking_id: UUID, body: CertificateRecordIn, app: App, principal: CurrentPrincipal) -> Response:
    """With a service token, once the file is stored: records CertificateUploaded."""
    certificate = CertificateFile(
        certificate_id=body.certificate_id,
        sha256=body.sha256,
        size=body.size,
        page_count=body.page_count,
        file_name=body.file_name,
        contains_results=body.contains_results,
    )
    actor = Actor(id=body.uploaded_by.id, role=body.uploaded_by.role)
    result = app.record_certificate_upload(
        principal, booking_id, certificate, on_behalf_of=actor, for_provider=body.uploaded_by.provider_id
    )
    return command_response(result, BookingOut.of(result.aggregate), status_code=201)


@internal.post("/{booking_id}/certificates/{certificate_id}/revoke", response_model=BookingOut)
def revoke_certificate(
    booking_id: UUID, certificate_id: UUID, body: ReasonIn, app: App, principal: CurrentPrincipal
) -> Response:
    result = app.revoke_certificate(principal, booking_id, certificate_id, body.reason)
    return command_response(result, BookingOut.of(result.aggregate))


@internal.put("/{booking_id}/certificates/{certificate_id}/visibility", response_model=BookingOut)
def change_visibility(
    booking_id: UUID, certificate_id: UUID, body: VisibilityIn, app: App, principal: CurrentPrincipal
) -> Response:
    result = app.change_certificate_visibility(principal, booking_id, certificate_id, public=body.public)
    return command_response(result, BookingOut.of(result.aggregate))
