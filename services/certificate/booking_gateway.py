"""Calls to the booking service, which owns bookings and records certificates on them.

Checks, revocations and visibility changes go with the caller's own bearer token, so the
booking service applies its own access rules; recording an upload goes with a service token.
Its refusals (403/404/409/412/422) are passed on unchanged; anything else is a 503.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import certifi
import httpx

from shared.errors import AppError, ServiceUnavailable
from shared.http import POSITION_HEADER, request_id_headers

log = logging.getLogger(__name__)

PASSED_ON_STATUSES = frozenset({403, 404, 409, 412, 422})


class BookingRefused(AppError):
    """The booking service said no; its status, code and message reach the caller as they are."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(message, code=code)
        self.status_code = status_code


class BookingUnavailable(ServiceUnavailable):
    code = "booking_unavailable"

    def __init__(self, *, maybe_done: bool) -> None:
        super().__init__("The booking service is unavailable; retry shortly.", headers={"Retry-After": "1"})
        # True when the request may have reached the booking service and taken effect there.
        self.maybe_done = maybe_done


@dataclass(frozen=True)
class RecordedCertificate:
    """The certificate as the booking service recorded it, and the position of that event."""

    summary: dict[str, Any]
    position: int | None


# Idle pooled connections are dropped before the booking service's server would close them
# (uvicorn's default: 5 s), so a request is not sent on a connection being closed under it.
KEEPALIVE_EXPIRY_S = 3.0


class BookingGateway:
    """One pool of keep-alive connections to the booking service: `aclose()` (or `async with`) ends it."""

    def __init__(self, base_url: str, *, timeout_s: float, service_token: Callable[[], str]) -> None:
        self._base_url = base_url.rstrip("/")
        self._timeout = httpx.Timeout(timeout_s)
        self._service_token = service_token
        # Building a TLS context costs ~80 ms: once, not per call.
        self._tls = ssl.create_default_context(cafile=certifi.where())
        # A new client per call cost a TCP connect and ~2 ms of set-up CPU on every call.
        self._client = httpx.AsyncClient(
            base_url=self._base_url,
            timeout=self._timeout,
            verify=self._tls,
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> BookingGateway:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def check_upload(self, authorization: str, booking_id: UUID, *, contains_results: bool) -> None:
        """Would the booking service accept a certificate from this caller? Raises if not."""
        await self._call(
            "POST",
            f"/internal/v1/bookings/{booking_id}/certificates/check",
            authorization,
            {"contains_results": contains_results},
        )

    async def record_upload(self, booking_id: UUID, record: dict[str, Any]) -> RecordedCertificate:
        """Records CertificateUploaded (service token; `record["uploaded_by"]` is the uploader)."""
        response = await self._call(
            "POST",
            f"/internal/v1/bookings/{booking_id}/certificates",
            f"Bearer {self._service_token()}",
            record,
        )
        return RecordedCertificate(response.json()["certificate"], _position(response))

    async def revoke(self, authorization: str, booking_id: UUID, certificate_id: UUID, reason: str) -> int | None:
        response = await self._call(
            "POST",
            f"/internal/v1/bookings/{booking_id}/certificates/{certificate_id}/revoke",
            authorization,
            {"reason": reason},
        )
        return _position(response)

    async def change_visibility(
        self, authorization: str, booking_id: UUID, certificate_id: UUID, *, public: bool
    ) -> int | None:
        response = await self._call(
            "PUT",
            f"/internal/v1/bookings/{booking_id}/certificates/{certificate_id}/visibility",
            authorization,
            {"public": public},
        )
        return _position(response)

    def ping(self) -> None:
        """For readiness: raises BookingUnavailable unless the booking service answers /healthz."""
        try:
            httpx.get(f"{self._base_url}/healthz", timeout=self._timeout, verify=self._tls).raise_for_status()
        except httpx.HTTPError as error:
            raise BookingUnavailable(maybe_done=False) from error

    async def _call(self, method: str, path: str, authorization: str, body: dict[str, Any]) -> httpx.Response:
        headers = {"Authorization": authorization, **request_id_headers()}
        try:
            response = await self._client.request(method, path, json=body, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            log.warning("booking service unreachable: %s %s: %r", method, path, error)
            raise BookingUnavailable(maybe_done=False) from error
        except httpx.HTTPError as error:  # sent, but no whole answer: it may have been done
            log.warning("booking service gave no answer: %s %s: %r", method, path, error)
            raise BookingUnavailable(maybe_done=True) from error
        if response.is_success:
            return response
        if response.status_code in PASSED_ON_STATUSES:
            code, message = _error_of(response)
            raise BookingRefused(response.status_code, code, message)
        log.error("booking service answered %s to %s %s: %s", response.status_code, method, path, response.text[:500])
        raise BookingUnavailable(maybe_done=response.status_code >= 500)


def _error_of(response: httpx.Response) -> tuple[str, str]:
    try:
        error = response.json()["error"]
        return str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return "booking_refused", "The booking service refused the request."


def _position(response: httpx.Response) -> int | None:
    value = response.headers.get(POSITION_HEADER, "")
    return int(value) if value.isdigit() else None
