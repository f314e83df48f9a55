"""HTTP plumbing every service shares: errors, auth dependency, limits, request ids, health, metrics."""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from json.encoder import encode_basestring_ascii as _json_string
from typing import Annotated, Any

import psycopg
import psycopg_pool
import structlog
from eventsourcing.persistence import PersistenceError
from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    generate_latest,
)
from pydantic import Field, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.auth import Principal, TokenVerifier
from shared.errors import AppError, DependencyDown, PayloadTooLarge, Unauthorized

log = structlog.get_logger(__name__)

REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_HEADER_BYTES = REQUEST_ID_HEADER.encode()
# Read-your-writes: commands answer with the position of their last event; a GET given that
# position back waits until its read model has it.
POSITION_HEADER = "X-Event-Position"
MIN_POSITION_HEADER = "X-Min-Position"

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


def unavailable_response(error: Exception) -> JSONResponse:
    """The answer to one of STORE_UNAVAILABLE_ERRORS."""
    log.warning("dependency unavailable", error=type(error).__name__)
    return error_response(
        503, "unavailable", "A storage dependency is unavailable; retry shortly.", {"Retry-After": "1"}
    )


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
        return unavailable_response(error)

    for unavailable in STORE_UNAVAILABLE_ERRORS:
        app.add_exception_handler(unavailable, store_unavailable)
    app.add_exception_handler(AppError, app_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)


async def get_principal(request: Request) -> Principal:
    """Async: a sync dependency costs a thread-pool round trip per request."""
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("A bearer token is required.", code="token_missing", headers={"WWW-Authenticate": "Bearer"})
    verifier: TokenVerifier = request.app.state.verifier
    return await verifier.verify_on_loop(token)


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
MIN_POSITION_DESCRIPTION = "Wait until the read model has this position"
MinPosition = Annotated[int | None, Header(alias=MIN_POSITION_HEADER, ge=0, description=MIN_POSITION_DESCRIPTION)]
# `MinPosition` for routes that read the header themselves (`min_position`): their OpenAPI parameter.
MIN_POSITION_PARAMETER = {
    "name": MIN_POSITION_HEADER,
    "in": "header",
    "required": False,
    "description": MIN_POSITION_DESCRIPTION,
    "schema": {"type": "integer", "minimum": 0},
}
_MIN_POSITION = TypeAdapter(Annotated[int, Field(ge=0)])


def min_position(given: bytes | None) -> int | None:
    """The `MinPosition` header's value, read as FastAPI would (same 422 for a bad value) at a fraction
    of the cost of a header parameter: for routes where that cost is most of the request (a kept answer)."""
    if given is None:
        return None
    try:
        return _MIN_POSITION.validate_python(given.decode("latin-1"))
    except ValidationError as error:
        raise RequestValidationError(
            [{**problem, "loc": ("header", MIN_POSITION_HEADER)} for problem in error.errors()]
        ) from None


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header (`name` in lower case, as ASGI gives names)."""
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


def request_headers(scope: Scope) -> dict[bytes, bytes]:
    """The first value of each request header by name (in lower case, as ASGI gives names): for
    reading several, one pass instead of one `header` call each."""
    return dict(reversed(scope["headers"]))


Endpoint = Callable[[Scope, Receive, Send], Awaitable[None]]


class AsgiRoute(APIRoute):
    """A path operation whose endpoint is a plain ASGI app: `endpoint(scope, receive, send)`.

    FastAPI documents it like any other, from the route's options (its parameters in
    `openapi_extra`), but it is served without FastAPI's request machinery: no Request or Response
    objects, no dependencies to solve, which together cost more than a cheap answer (a kept one).
    The path parameters are in `scope["path_params"]`; what the endpoint raises goes to the app's
    exception handlers, as from any route. Use with `route_class_override`.
    """

    def __init__(self, path: str, endpoint: Endpoint, **options: Any) -> None:
        self.asgi_endpoint = endpoint
        super().__init__(path, _read_by_fastapi(endpoint), **options)

    def served_directly(self) -> AsgiRoute:
        """The same operation, undocumented: for an app to serve it among its own routes while the
        router it comes from documents it."""
        return AsgiRoute(
            self.path, self.asgi_endpoint, methods=list(self.methods), name=self.name, include_in_schema=False
        )

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] in self.methods:
            await self.asgi_endpoint(scope, receive, send)
        else:
            await super().handle(scope, receive, send)  # 405, as from any route


def _read_by_fastapi(endpoint: Endpoint) -> Callable[[], Awaitable[None]]:
    """What FastAPI reads of an endpoint (name, docstring, module) without parameters: scope, receive
    and send are none of FastAPI's. Never called: `AsgiRoute.handle` calls the endpoint itself."""

    async def documented() -> None:
        raise NotImplementedError(endpoint.__qualname__)

    functools.update_wrapper(documented, endpoint)
    documented.__signature__ = inspect.Signature()  # type: ignore[attr-defined]
    return documented


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
        declared = header(scope, b"content-length")
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


class AccessLog:
    """The line each request is logged with: event "request", its method, route, status and duration.

    It runs once per request, and for a cheap request structlog's chain would be a large part of its
    cost; so JSON lines are rendered here, with the fields, order and rendering that chain gives a
    structlog line (`configure_logging`), in a fraction of the time. The request id is the only context
    a request binds, so it is the only one such a line carries. Any other format, or logging not
    configured, goes through structlog.
    """

    def __init__(self) -> None:
        self._json_lines: structlog.PrintLogger | None = None
        self._timestamps = UtcTimestamps()

    def render_json(self, enabled: bool) -> None:
        """JSON lines at info level or below: `configure_logging` decides."""
        # structlog's own logger: the same stream (stdout as it is when writing) and the same lock.
        self._json_lines = structlog.PrintLogger() if enabled else None

    def __call__(self, request_id: str, method: str, route: str, status: int, duration_ms: float) -> None:
        if self._json_lines is None:
            log.info("request", method=method, route=route, status=status, duration_ms=duration_ms)
            return
        # What json.dumps gives for these fields in this order (a test holds them equal), in a sixth of its time.
        self._json_lines.msg(
            f'{{"method": {_json_string(method)}, "route": {_json_string(route)}, "status": {status}, '
            f'"duration_ms": {duration_ms!r}, "event": "request", "request_id": {_json_string(request_id)}, '
            f'"level": "info", "timestamp": "{self._timestamps.now()}"}}'
        )


class UtcTimestamps:
    """The time now as structlog's TimeStamper(fmt="iso", utc=True) writes it (ISO 8601, "Z"), in half
    the time of a datetime: the date and the time of day are formatted once a second."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._second: tuple[int, str] = (-1, "")  # one tuple: threads read the second and its text together

    def now(self) -> str:
        # As datetime.fromtimestamp rounds (half to even, a whole second carried over).
        fraction, whole = math.modf(self._clock())
        second, microsecond = divmod(int(whole) * 1_000_000 + round(fraction * 1_000_000), 1_000_000)
        cached_second, formatted = self._second
        if second != cached_second:
            formatted = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, formatted)
        # datetime.isoformat leaves out a zero fraction.
        return f"{formatted}.{microsecond:06d}Z" if microsecond else f"{formatted}Z"


ACCESS_LOG = AccessLog()


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
        # The histogram of each (method, route, status): `labels()` validates and locks on every call.
        self._latency_of: dict[tuple[str, str, int], Any] = {}

    def _observe(self, method: str, route: str, status: int, seconds: float) -> None:
        histogram = self._latency_of.get((method, route, status))
        if histogram is None:
            histogram = self._latency_of[method, route, status] = self.latency.labels(
                self.service, method, route, str(status)
            )
        histogram.observe(seconds)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        async def observed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            given_id = header(scope, REQUEST_ID_HEADER_BYTES)
            # A new id: 32 random hex digits, like uuid4().hex at a fraction of its cost.
            request_id = given_id.decode("latin-1")[:100] if given_id else os.urandom(16).hex()
            structlog.contextvars.bind_contextvars(request_id=request_id)
            status = 500
            started = time.perf_counter()

            async def send_with_id(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER_BYTES, request_id.encode())]
                await send(message)

            try:
                await app(scope, receive, send_with_id)
            finally:
                elapsed = time.perf_counter() - started
                route = getattr(scope.get("route"), "path", "unmatched")
                self._observe(scope["method"], route, status, elapsed)
                ACCESS_LOG(request_id, scope["method"], route, status, round(elapsed * 1000, 2))
                structlog.contextvars.unbind_contextvars("request_id")

        return observed


# Probes wait about this long (Kubernetes: timeoutSeconds 3): a dependency slower than this is down.
READINESS_TIMEOUT_S = 2.0


class ReadinessProbe:
    """Runs the readiness checks in parallel and answers within READINESS_TIMEOUT_S.

    A check can hang far longer than a probe waits: with PostgreSQL stopped, a store's call waits for
    a pooled connection, and the library retries some calls ten times over. Such a check counts
    as failing; it keeps running in a background thread, and later probes wait for that same run
    instead of starting another, so an outage costs one thread per check, not one per probe.
    """

    def __init__(self, checks: dict[str, Callable[[], None]], timeout_s: float = READINESS_TIMEOUT_S) -> None:
        self._checks = checks
        self._timeout_s = timeout_s
        self._running: dict[str, Future[None]] = {}
        self._lock = threading.Lock()

    def failures(self) -> dict[str, str]:
        with self._lock:
            runs = {name: self._run(name, check) for name, check in self._checks.items()}
        deadline = time.monotonic() + self._timeout_s
        failures: dict[str, str] = {}
        for name, run in runs.items():
            try:
                run.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                failures[name] = f"no answer within {self._timeout_s:g} s"
            except DependencyDown as error:
                failures[name] = str(error) or type(error).__name__
            except Exception as error:  # an unforeseen failure of a check still means "not ready", never a 500
                log.warning("readiness check failed", check=name, error=repr(error))
                failures[name] = type(error).__name__
        return failures

    def _run(self, name: str, check: Callable[[], None]) -> Future[None]:
        running = self._running.get(name)
        if running is not None and not running.done():
            return running
        run: Future[None] = Future()

        def target() -> None:
            try:
                check()
            except BaseException as error:  # handed to the probe that waits for this run
                run.set_exception(error)
            else:
                run.set_result(None)

        # A daemon thread: a check stuck on a dead dependency must not delay the process's exit.
        threading.Thread(target=target, name=f"readiness-{name}", daemon=True).start()
        self._running[name] = run
        return run


def health_router(observability: Observability, readiness: dict[str, Callable[[], None]]) -> APIRouter:
    """/healthz (alive), /readyz (every dependency answers, promptly), /metrics (Prometheus)."""
    router = APIRouter(tags=["operations"])
    probe = ReadinessProbe(readiness)

    @router.get("/healthz", summary="The process is alive")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", summary="Every dependency is reachable", responses={503: {"description": "not ready"}})
    def readyz() -> Response:
        failures = probe.failures()
        if failures:
            return JSONResponse(
                {
                    "status": "unavailable",
                    "failing": failures,
                    "error": {"code": "not_ready", "message": f"Unavailable: {', '.join(failures)}"},
                },
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


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is when a record is emitted, not when the handler was made
    (test runners and tools swap it)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr


def configure_logging(level: str, fmt: str) -> None:
    """JSON logs in production, readable ones on a console; never log secrets (we log no settings).

    Libraries log through the standard library (uvicorn, the event store, httpx): their records get
    the same renderer, level, timestamp and request id, so that a JSON log has only JSON lines.
    """
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    common = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*common, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=True,
    )
    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*common, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    # httpx logs each call at info; the called service's access line already tells it (same request id).
    logging.getLogger("httpx").setLevel(logging.WARNING if root.level >= logging.INFO else logging.NOTSET)
    ACCESS_LOG.render_json(fmt == "json" and root.isEnabledFor(logging.INFO))
