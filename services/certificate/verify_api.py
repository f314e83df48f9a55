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
from starlette.types import Receive, Scope, Send
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
from shared.http import (
    MIN_POSITION_HEADER,
    MIN_POSITION_PARAMETER,
    AsgiRoute,
    MinPosition,
    min_position,
    request_headers,
)
from shared.ratelimit import ClientRateLimit

VERIFY_FILE_PATH = "/verify"
JWKS_PATH = "/.well-known/jwks.json"
JSON = "application/json"
HTML = "text/html"
NO_STORE = "no-store"
CACHE_KEYS = "public, max-age=300"
# Answers by id are sent at the ASGI level: their headers as ASGI has them (names in lower case, bytes).
# Short for valid answers, so a revocation is seen within a minute; never cache the rest.
CACHE_VALID_ANSWER = (b"cache-control", b"public, max-age=60")
DO_NOT_STORE_ANSWER = (b"cache-control", NO_STORE.encode())
VARY = (b"vary", b"Accept, Accept-Language")
JSON_TYPE = (b"content-type", JSON.encode())
PAGE_TYPE = (b"content-type", b"text/html; charset=utf-8")
PAGE_SECURITY_HEADERS = (
    (
        b"content-security-policy",
        (
            b"default-src 'none'; img-src https: http: data:; style-src 'unsafe-inline'; "
            b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        ),
    ),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
)
MIN_POSITION_HEADER_NAME = MIN_POSITION_HEADER.lower().encode()


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


def rate_limit(scope: Scope, forwarded_for: str | None) -> None:
    """First thing in every route here: a plain call, as a dependency it would cost more than a kept answer."""
    limit: ClientRateLimit = scope["app"].state.verify_rate_limit
    client = scope.get("client")
    limit.check(client[0] if client else None, forwarded_for)


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


async def verify_by_id(scope: Scope, receive: Receive, send: Send) -> None:
    """JSON for `Accept: application/json`, otherwise the page (Swedish or English by Accept-Language)."""
    headers = request_headers(scope)
    rate_limit(scope, _text(headers.get(b"x-forwarded-for")))
    wait_for = min_position(headers.get(MIN_POSITION_HEADER_NAME))
    answers: SignedAnswers = scope["app"].state.signed_answers
    # A kept answer is served on the event loop; only building one reads the database.
    answer = await answers.answer_soon(scope["path_params"]["certificate_id"], wait_for)
    response_headers = [CACHE_VALID_ANSWER if answer.state == "valid" else DO_NOT_STORE_ANSWER, VARY]
    if _wants_json(headers.get(b"accept")):
        representation, content_type = answer.json, JSON_TYPE
    else:
        locale = negotiate_locale(_text(headers.get(b"accept-language")))
        representation, content_type = answer.page(locale), PAGE_TYPE
        response_headers += PAGE_SECURITY_HEADERS
        response_headers.append((b"content-language", locale.encode()))
    if answer.state == "not_found":  # nothing to revalidate: no ETag
        await _respond(send, 404, [*response_headers, content_type], representation.body)
        return
    response_headers.append((b"etag", representation.etag))
    if_none_match = headers.get(b"if-none-match")
    if if_none_match is not None and representation.matches(if_none_match.decode("latin-1")):
        await _respond(send, 304, response_headers)
        return
    await _respond(send, 200, [*response_headers, content_type], representation.body)


verify.add_api_route(
    "/verify/{certificate_id:path}",  # `:path`: an id with a slash gets the signed not_found answer too
    verify_by_id,
    methods=["GET"],
    route_class_override=AsgiRoute,
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


async def _respond(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> None:
    if body:
        headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


VERIFY_FILE_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {
                        FILE_FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": "The certificate PDF to check",
                        }
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
    rate_limit(request.scope, request.headers.get("x-forwarded-for"))
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
    rate_limit(request.scope, request.headers.get("x-forwarded-for"))
    return JSONResponse(_answers(request).signer.jwks(), headers={"Cache-Control": CACHE_KEYS})


def _issued_with(request: Request, sha256: str, min_position: int | None) -> RegisteredCertificate | None:
    registry = get_registry(request)
    wait_for_registry(request, registry, min_position)
    return registry.get_by_sha256(sha256)


@functools.lru_cache(maxsize=256)  # clients send few distinct Accept headers; parsing one costs more than the rest
def _wants_json(accept: bytes | None) -> bool:
    """HTML unless the client prefers JSON (a browser's */* counts for the page)."""
    return parse_accept_header(_text(accept) or "", MIMEAccept).best_match((HTML, JSON), default=HTML) == JSON


def _answers(request: Request) -> SignedAnswers:
    return request.app.state.signed_answers  # type: ignore[no-any-return]
