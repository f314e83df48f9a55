"""One way to assemble a service's FastAPI app, shared by the three services."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from types import FrameType
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, Field

from shared.auth import TokenVerifier
from shared.http import AsgiRoute, BodyLimitMiddleware, Observability, health_router, install_error_handlers
from shared.idempotency import IdempotencyMiddleware
from shared.settings import ServiceSettings

ReadinessChecks = dict[str, Callable[[], None]]


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable error code")
    message: str = Field(description="What went wrong and what to do, for people")


class ErrorBody(BaseModel):
    error: ErrorDetail


# Documents the one error format for every operation (and replaces FastAPI's own 422 schema).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorBody, "description": "The request cannot be served as sent"},
    "5XX": {"model": ErrorBody, "description": "A dependency is unavailable; retry later"},
}

# On SIGTERM uvicorn stops accepting, lets requests in flight finish for at most this long, then
# runs the lifespan shutdown (workers stopped, pools closed). Below Kubernetes' 30 s grace period.
GRACEFUL_SHUTDOWN_S = 20


def token_verifier(settings: ServiceSettings) -> TokenVerifier:
    return TokenVerifier(
        secret=settings.dev_auth_secret,
        public_key=settings.auth_public_key,
        jwks_url=settings.auth_jwks_url,
    )


def create_service_app(
    *,
    service: str,
    title: str,
    description: str,
    settings: ServiceSettings,
    routers: list[APIRouter],
    resources: Callable[[FastAPI], AbstractContextManager[ReadinessChecks]],
    body_limit_for: Callable[[str], int] | None = None,
) -> FastAPI:
    """`resources(app)` opens what the service needs (stores, workers), puts it on app.state,
    yields the readiness checks and closes everything on shutdown."""
    observability = Observability(service)
    readiness: ReadinessChecks = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with resources(app) as checks:
            readiness.update(checks)
            yield

    app = FastAPI(title=title, description=description, version="1.0.0", lifespan=lifespan, responses=ERROR_RESPONSES)
    app.state.settings = settings
    app.state.verifier = token_verifier(settings)
    app.state.observability = observability
    install_error_handlers(app)
    # Answers served at the ASGI level are the cheap, busy ones: the app matches them first, by itself,
    # since matching a route through an included router costs about as much again as such an answer.
    # Their routers still document them (so their paths must not overlap routes of earlier routers).
    app.router.routes[:0] = [
        route.served_directly() for router in routers for route in router.routes if isinstance(route, AsgiRoute)
    ]
    for router in routers:
        app.include_router(router)
    app.include_router(health_router(observability, readiness))
    app.add_middleware(IdempotencyMiddleware)
    app.add_middleware(BodyLimitMiddleware, limit_for=body_limit_for or (lambda _path: settings.max_request_bytes))
    app.add_middleware(observability.middleware)  # outermost: sees every request, errors included
    return app


def run_api(app: FastAPI, *, host: str, port: int) -> None:
    """Serves `app` until SIGTERM or SIGINT, shuts down gracefully and exits with status 0.

    uvicorn re-raises the stop signal once its shutdown is complete; with the default handler the
    process would then die of the signal (status 143) although it stopped as asked.
    """
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, _exit_cleanly)
    # Observability logs each request with its id, route and duration: no uvicorn access line.
    uvicorn.run(
        app, host=host, port=port, log_config=None, access_log=False, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S
    )


def _exit_cleanly(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)
