"""Public certificate verification (no login): by id, by file, and the keys that check the answers.

Every JSON answer carries a detached JWS over its canonical form, so a saved answer can be
checked offline against /.well-known/jwks.json. All routes here are rate limited per client.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from services.certificate.api import FILE_FIELD, get_registry, read_pdf_form, wait_for_registry
from services.certificate.projections import RegisteredCertificate
from services.certificate.settings import CertificateSettings
from services.certificate.signing import AnswerSigner
from services.certificate.uploads import CertificateIssuer
from services.certificate.verification import (
    VerificationAnswer,
    canonical_certificate_id,
    verification_answer,
)
from services.certificate.verify_page import negotiate_locale, render_verify_page
from shared.errors import Invalid
from shared.http import MinPosition
from shared.ratelimit import ClientRateLimit

VERIFY_FILE_PATH = "/verify"
JWKS_PATH = "/.well-known/jwks.json"
JSON = "application/json"
HTML = "text/html"
# Short for valid answers, so a revocation is seen within a minute; never cache the rest.
CACHE_VALID = "public, max-age=60"
NO_STORE = "no-store"
CACHE_KEYS = "public, max-age=300"
PAGE_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; img-src https: http: data:; style-src 'unsafe-inline'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


class AnswerSignature(BaseModel):
    jws: str
    kid: str
    jwks_url: str


class SignedVerificationAnswer(VerificationAnswer):
    """`signature.jws` is a detached JWS (EdDSA) over the canonical JSON of the answer without
    `signature` (sorted keys, no whitespace, UTF-8)."""

    signature: AnswerSignature


async def rate_limited(request: Request) -> None:
    limit: ClientRateLimit = request.app.state.verify_rate_limit
    limit.check(request.client.host if request.client else None, request.headers.get("x-forwarded-for"))


verify = APIRouter(
    tags=["verification"],
    dependencies=[Depends(rate_limited)],
    responses={429: {"description": "Too many requests from this client; see Retry-After"}},
)


@verify.get(
    "/verify/{certificate_id:path}",
    response_class=JSONResponse,
    responses={
        200: {
            "description": "A certificate issued here: valid, revoked or superseded",
            "model": SignedVerificationAnswer,
            "content": {HTML: {"schema": {"type": "string"}}},
        },
        404: {
            "description": "No such certificate (also for malformed ids): the same answer, state not_found",
            "model": SignedVerificationAnswer,
            "content": {HTML: {"schema": {"type": "string"}}},
        },
    },
)
def verify_by_id(request: Request, certificate_id: str, min_position: MinPosition = None) -> Response:
    """JSON for `Accept: application/json`, otherwise the page (Swedish or English by Accept-Language)."""
    registry = get_registry(request)
    wait_for_registry(request, registry, min_position)
    canonical_id = canonical_certificate_id(certificate_id)
    certificate = registry.get(canonical_id) if canonical_id else None
    answer = verification_answer(certificate, asked_id=canonical_id or certificate_id, checked_at=_now())
    status = 404 if certificate is None else 200
    headers = {"Cache-Control": CACHE_VALID if answer["state"] == "valid" else NO_STORE, "Vary": "Accept, Accept-Language"}
    if _wants_json(request.headers.get("accept")):
        return JSONResponse(_signed(request, answer), status_code=status, headers=headers)
    locale = negotiate_locale(request.headers.get("accept-language"))
    # The page can show a revocation reason; public answers never carry one.
    page = render_verify_page({**answer, "revocation_reason": None}, locale=locale)
    return HTMLResponse(page, status_code=status, headers={**headers, **PAGE_SECURITY_HEADERS, "Content-Language": locale})


VERIFY_FILE_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {
                        FILE_FIELD: {"type": "string", "format": "binary", "description": "The certificate PDF to check"}
                    },
                }
            }
        },
    }
}


@verify.post(
    VERIFY_FILE_PATH,
    response_model=SignedVerificationAnswer,
    openapi_extra=VERIFY_FILE_REQUEST_BODY,
    responses={
        200: {
            "description": (
                "The check ran. Issued here: the certificate's answer with file_matches true (its state may be"
                " revoked or superseded). Not issued here, or modified: state not_found, file_matches false,"
                " certificate_id null."
            )
        },
        413: {"description": "The file is larger than MAX_UPLOAD_BYTES"},
        415: {"description": "Not a PDF, or not sent as multipart/form-data"},
        422: {"description": "A damaged, encrypted or unsafe PDF, or a malformed form"},
    },
)
async def verify_file(request: Request, min_position: MinPosition = None) -> JSONResponse:
    """Is this PDF exactly a certificate issued here? Same checks and limits as an upload; nothing is kept."""
    form = await read_pdf_form(request)
    with form.file:
        if form.fields:
            raise Invalid(f"Send only the PDF, in the form field '{FILE_FIELD}'.", code="unexpected_field")
        issuer: CertificateIssuer = request.app.state.certificate_issuer
        facts = await issuer.inspect(form.file)
    certificate = await run_in_threadpool(_issued_with, request, facts.sha256, min_position)
    answer = verification_answer(certificate, asked_id=None, checked_at=_now(), file_sha256=facts.sha256)
    return JSONResponse(_signed(request, answer), headers={"Cache-Control": NO_STORE})


@verify.get(JWKS_PATH, summary="Public keys that check verification answers (JWK set)")
def jwks(request: Request) -> JSONResponse:
    """Every configured key, the retired ones too, so answers signed before a rotation still verify."""
    return JSONResponse(_signer(request).jwks(), headers={"Cache-Control": CACHE_KEYS})


def _issued_with(request: Request, sha256: str, min_position: int | None) -> RegisteredCertificate | None:
    registry = get_registry(request)
    wait_for_registry(request, registry, min_position)
    return registry.get_by_sha256(sha256)


def _wants_json(accept: str | None) -> bool:
    """HTML unless the client prefers JSON (a browser's */* counts for the page)."""
    return parse_accept_header(accept or "", MIMEAccept).best_match((HTML, JSON), default=HTML) == JSON


def _signed(request: Request, answer: dict[str, Any]) -> dict[str, Any]:
    signer = _signer(request)
    settings: CertificateSettings = request.app.state.settings
    signature = AnswerSignature(
        jws=signer.sign(answer),
        kid=signer.active_kid,
        jwks_url=f"{settings.certificate_url.rstrip('/')}{JWKS_PATH}",
    )
    return {**answer, "signature": signature.model_dump()}


def _signer(request: Request) -> AnswerSigner:
    return request.app.state.answer_signer  # type: ignore[no-any-return]


def _now() -> datetime:
    return datetime.now(UTC)
