"""HTTP plumbing every service shares: errors, auth dependency, limits, request ids, health, metrics."""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any

import psycopg
import psycopg_pool
import structlog
from eventsourcing.persistence import PersistenceError
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.auth import Principal, TokenVerifier
from shared.errors import AppError, DependencyDown, PayloadTooLarge, Unauthorized

log = structlog.get_logger(__name__)

REQUEST_ID_HEADER = "x-request-id"

# Raised by the event store and read models when the database is down or a lock times out:
# the client did nothing wrong and should retry, so 503, never 500.
STORE_UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    PersistenceError,
    psycopg.OperationalError,
    psycopg_pool.PoolTimeout,
    sqlite3.OperationalError,
    DependencyDown,
)

HTTP_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _describe_validation(error: RequestValidationError) -> str:
    problems = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item.get("loc", ()) if p != "body") or "request"
        problems.append(f"{where}: {item.get('msg', 'invalid')}")
    return "; ".join(problems)


def install_error_handlers(app: FastAPI) -> None:
    """One error format for everything: domain errors, validation, unknown routes."""

    async def app_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, AppError)
        return error_response(error.status_code, error.code, error.message, error.headers)

    async def validation_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        return error_response(422, "validation_error", _describe_validation(error))

    async def http_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        code = HTTP_STATUS_CODES.get(error.status_code, "error")
        return error_response(error.status_code, code, str(error.detail), dict(error.headers or {}))

    async def store_unavailable(_: Request, error: Exception) -> JSONResponse:
        log.warning("dependency unavailable", error=type(error).__name__)
        return error_response(
            503, "unavailable", "A storage dependency is unavailable; retry shortly.", {"Retry-After": "1"}
        )

    for unavailable in STORE_UNAVAILABLE_ERRORS:
        app.add_exception_handler(unavailable, store_unavailable)
    app.add_exception_handler(AppError, app_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)


def get_principal(request: Request) -> Principal:
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("A bearer token is required.", code="token_missing", headers={"WWW-Authenticate": "Bearer"})
    verifier: TokenVerifier = request.app.state.verifier
    return verifier.verify(token.strip())


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


class BodyLimitMiddleware:
    """Refuses bodies above the limit for their path (413) without reading them whole."""

    def __init__(self, app: ASGIApp, *, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(scope, receive, send, limit)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
            return message

        await self.app(scope, limited_receive, send)


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    response = error_response(413, "payload_too_large", f"The request body is larger than {limit} bytes.")
    await response(scope, receive, send)


class Observability:
    """Request ids carried across calls, structured access logs, latency histograms by route."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Request latency by route",
            ["service", "method", "route", "status"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )

    def middleware(self, app: ASGIApp) -> ASGIApp:
        async def observed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            headers = dict(scope["headers"])
            request_id = headers.get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")[:100] or uuid.uuid4().hex
            structlog.contextvars.bind_contextvars(request_id=request_id)
            status = 500
            started = time.perf_counter()

            async def send_with_id(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    message.setdefault("headers", [])
                    message["headers"] = [*message["headers"], (REQUEST_ID_HEADER.encode(), request_id.encode())]
                await send(message)

            try:
                await app(scope, receive, send_with_id)
            finally:
                elapsed = time.perf_counter() - started
                route = getattr(scope.get("route"), "path", "unmatched")
                self.latency.labels(self.service, scope["method"], route, str(status)).observe(elapsed)
                log.info(
                    "request",
                    method=scope["method"],
                    route=route,
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )
                structlog.contextvars.unbind_contextvars("request_id")

        return observed


def health_router(observability: Observability, readiness: dict[str, Callable[[], None]]) -> APIRouter:
    """/healthz (alive), /readyz (every dependency answers), /metrics (Prometheus)."""
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", summary="The process is alive")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", summary="Every dependency is reachable", responses={503: {"description": "not ready"}})
    def readyz() -> Response:
        failures: dict[str, str] = {}
        for name, check in readiness.items():
            try:
                check()
            except DependencyDown as error:
                failures[name] = str(error) or type(error).__name__
        if failures:
            return JSONResponse(
                {"status": "unavailable", "failing": failures,
                 "error": {"code": "not_ready", "message": f"Unavailable: {', '.join(failures)}"}},
                status_code=503,
            )
        return JSONResponse({"status": "ready", "checks": sorted(readiness)})

    @router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    def metrics() -> Response:
        return Response(generate_latest(observability.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def request_id_headers() -> dict[str, str]:
    """Headers that carry the current request id to the next service."""
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    return {REQUEST_ID_HEADER: request_id} if request_id else {}


def configure_logging(level: str, fmt: str) -> None:
    """JSON logs in production, readable ones on a console; never log secrets (we log no settings)."""
    renderer: Any = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=level.upper(), format="%(message)s")
