"""One way to assemble a service's FastAPI app, shared by the three services."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI

from shared.auth import TokenVerifier
from shared.http import BodyLimitMiddleware, Observability, health_router, install_error_handlers
from shared.idempotency import IdempotencyMiddleware
from shared.settings import ServiceSettings

ReadinessChecks = dict[str, Callable[[], None]]


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

    app = FastAPI(title=title, description=description, version="1.0.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.verifier = token_verifier(settings)
    app.state.observability = observability
    install_error_handlers(app)
    for router in routers:
        app.include_router(router)
    app.include_router(health_router(observability, readiness))
    app.add_middleware(IdempotencyMiddleware)
    app.add_middleware(BodyLimitMiddleware, limit_for=body_limit_for or (lambda _path: settings.max_request_bytes))
    app.add_middleware(_ObservabilityMiddleware, observability=observability)
    return app


class _ObservabilityMiddleware:
    def __init__(self, app: Any, *, observability: Observability) -> None:
        self._app = observability.middleware(app)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._app(scope, receive, send)

