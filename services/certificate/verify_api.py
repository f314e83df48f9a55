"""Public certificate verification (no login): by id, by file, and the keys that check the answers.

Every JSON answer carries a detached JWS over its canonical form, so a saved answer can be
checked offline against /.well-known/jwks.json. All routes here are rate limited per client.
Answers by id are kept per process while the registry has not moved (see signed_answers.py) and
carry an ETag: a client that sends it back in If-None-Match gets 304 while the answer is unchanged.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime

from eventsourcing.persistence import ApplicationRecorder
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from services.booking.application import BookingApplication
from services.certificate.api import FILE_FIELD, get_registry, read_pdf_form, wait_for_registry
from services.certificate.projections import CertificateRegistry, RegisteredCertificate
from services.certificate.settings import CertificateSettings
from services.certificate.signed_answers import SignedAnswers, SignedVerificationAnswer
from services.certificate.signing import AnswerSigner
from services.certificate.uploads import CertificateIssuer
from services.certificate.verification import verification_answer
from services.certificate.verify_page import negotiate_locale
from shared.errors import Invalid
from shared.feed import read_your_writes
from shared.http import MIN_POSITION_PARAMETER, MinPosition, min_position
from shared.ratelimit import ClientRateLimit

VERIFY_FILE_PATH = "/verify"
JWKS_PATH = "/.well-known/jwks.json"
JSON = "application/json"
HTML = "text/html"
# Short for valid answers, so a revocation is seen within a minute; never cache the rest.
CACHE_VALID = "public, max-age=60"
NO_STORE = "no-store"
CACHE_KEYS = "public, max-age=300"
VARY = "Accept, Accept-Language"
PAGE_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; img-src https: http: data:; style-src 'unsafe-inline'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def signed_answers(
    settings: CertificateSettings, registry: CertificateRegistry, booking_events: ApplicationRecorder
) -> SignedAnswers:
    """The answers of this process, signed with the configured keys."""
    signer = AnswerSigner.from_settings(
        signing_keys_json=settings.verify_signing_keys.get_secret_value(), data_dir=settings.data_dir
    )

    def catch_up(position: int) -> None:
        read_your_writes(
            registry, booking_events, BookingApplication.name, position, settings.read_your_writes_timeout_s
        )

    return SignedAnswers(
        registry,
        signer,
        jwks_url=f"{settings.certificate_url.rstrip('/')}{JWKS_PATH}",
        upstream=BookingApplication.name,
        catch_up=catch_up,
    )


def rate_limit(request: Request) -> None:
    """First thing in every route here: a plain call, as a dependency it would cost more than a kept answer."""
    limit: ClientRateLimit = request.app.state.verify_rate_limit
    client = request.client  # a new object at each access
    limit.check(client.host if client else None, request.headers.get("x-forwarded-for"))


verify = APIRouter(
    tags=["verification"], responses={429: {"description": "Too many requests from this client; see Retry-After"}}
)


# The handler reads its parameters itself: FastAPI's parameter machinery would cost about as much
# as everything else a kept answer takes. Documented here instead.
VERIFY_BY_ID_PARAMETERS = {
    "parameters": [
        {
            "name": "certificate_id",
            "in": "path",
            "required": True,
            "description": "The id printed on the certificate (a UUID; other text gets a not_found answer)",
            "schema": {"type": "string"},
        },
        MIN_POSITION_PARAMETER,
    ]
}


@verify.get(
    "/verify/{certificate_id:path}",  # `:path`: an id with a slash gets the signed not_found answer too
    response_class=JSONResponse,
    openapi_extra=VERIFY_BY_ID_PARAMETERS,
    responses={
        200: {
            "description": "A certificate issued here: valid, revoked or superseded",
            "model": SignedVerificationAnswer,
            "content": {HTML: {"schema": {"type": "string"}}},
        },
        304: {"description": "If-None-Match holds the ETag of the current answer: it has not changed"},
        404: {
            "description": "No such certificate (also for malformed ids): the same answer, state not_found",
            "model": SignedVerificationAnswer,
            "content": {HTML: {"schema": {"type": "string"}}},
        },
    },
)
async def verify_by_id(request: Request) -> Response:
    """JSON for `Accept: application/json`, otherwise the page (Swedish or English by Accept-Language)."""
    rate_limit(request)
    certificate_id: str = request.path_params["certificate_id"]
    wait_for = min_position(request)
    # A kept answer is served on the event loop; only building one reads the database.
    answer = await _answers(request).answer_soon(certificate_id, wait_for)
    headers = {"Cache-Control": CACHE_VALID if answer.state == "valid" else NO_STORE, "Vary": VARY}
    if _wants_json(request.headers.get("accept")):
        representation, media_type = answer.json, JSON
    else:
        locale = negotiate_locale(request.headers.get("accept-language"))
        representation, media_type = answer.page(locale), HTML
        headers.update(PAGE_SECURITY_HEADERS)
        headers["Content-Language"] = locale
    if answer.state == "not_found":  # nothing to revalidate: no ETag
        return Response(representation.body, status_code=404, media_type=media_type, headers=headers)
    headers["ETag"] = representation.etag
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and representation.matches(if_none_match):
        return Response(status_code=304, headers=headers)
    return Response(representation.body, media_type=media_type, headers=headers)


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
async def verify_file(request: Request, min_position: MinPosition = None) -> Response:
    """Is this PDF exactly a certificate issued here? Same checks and limits as an upload; nothing is kept."""
    rate_limit(request)
    form = await read_pdf_form(request)
    with form.file:
        if form.fields:
            raise Invalid(f"Send only the PDF, in the form field '{FILE_FIELD}'.", code="unexpected_field")
        issuer: CertificateIssuer = request.app.state.certificate_issuer
        facts = await issuer.inspect(form.file)
    certificate = await run_in_threadpool(_issued_with, request, facts.sha256, min_position)
    answer = _answers(request).signed(
        verification_answer(certificate, asked_id=None, checked_at=datetime.now(UTC), file_sha256=facts.sha256)
    )
    return Response(answer.json.body, media_type=JSON, headers={"Cache-Control": NO_STORE})


@verify.get(JWKS_PATH, summary="Public keys that check verification answers (JWK set)")
async def jwks(request: Request) -> JSONResponse:
    """Every configured key, the retired ones too, so answers signed before a rotation still verify."""
    rate_limit(request)
    return JSONResponse(_answers(request).signer.jwks(), headers={"Cache-Control": CACHE_KEYS})


def _issued_with(request: Request, sha256: str, min_position: int | None) -> RegisteredCertificate | None:
    registry = get_registry(request)
    wait_for_registry(request, registry, min_position)
    return registry.get_by_sha256(sha256)


@functools.lru_cache(maxsize=256)  # clients send few distinct Accept headers; parsing one costs more than the rest
def _wants_json(accept: str | None) -> bool:
    """HTML unless the client prefers JSON (a browser's */* counts for the page)."""
    return parse_accept_header(accept or "", MIMEAccept).best_match((HTML, JSON), default=HTML) == JSON


def _answers(request: Request) -> SignedAnswers:
    return request.app.state.signed_answers  # type: ignore[no-any-return]
