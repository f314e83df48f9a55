"""The certificate service's calls to the booking service go over kept-alive connections, which
close with the gateway (and with the app that made it)."""

from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import FastAPI, Response
from fastapi.testclient import TestClient

from services.certificate.booking_gateway import BookingGateway
from services.certificate.main import create_app
from services.certificate.settings import CertificateSettings
from tests.fixtures.services import CertificateScenario, ServedApp, served

CLOSE_TIMEOUT_S = 5.0

Address = tuple[str, int]


def open_connections(server: ServedApp) -> set[Address]:
    """The client addresses of the connections the server has open."""
    return {connection.client for connection in list(server.server.server_state.connections) if connection.client}


def still_open_after_a_while(server: ServedApp, connections: set[Address]) -> set[Address]:
    """The server notices a closed connection on its next read: give it a moment."""
    deadline = time.monotonic() + CLOSE_TIMEOUT_S
    while (still_open := connections & open_connections(server)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return still_open


def agreeing_booking_service() -> FastAPI:
    """Says yes to every upload check."""
    app = FastAPI()

    @app.post("/internal/v1/bookings/{booking_id}/certificates/check")
    def check() -> Response:
        return Response(status_code=204)

    return app


def test_calls_share_one_connection_that_closes_with_the_gateway() -> None:
    with served(agreeing_booking_service()) as booking:
        used: set[Address] = set()

        async def checks() -> None:
            async with BookingGateway(booking.url, timeout_s=5.0, service_token=lambda: "unused") as gateway:
                for _ in range(3):
                    await gateway.check_upload("Bearer provider", uuid.uuid4(), contains_results=False)
                    used.update(open_connections(booking))

        asyncio.run(checks())

        assert len(used) == 1
        assert still_open_after_a_while(booking, used) == set()


def test_the_app_closes_its_booking_connections_when_it_stops(
    certificate_settings: CertificateSettings, certificate_scenario: CertificateScenario, booking_server: ServedApp
) -> None:
    scenario = certificate_scenario
    party = scenario.provider()
    booking_id = scenario.booking_for(party, status="started")  # the booking service refuses: no PDF is read
    others = open_connections(booking_server)

    with TestClient(create_app(certificate_settings), raise_server_exceptions=False) as certificates:
        for _ in range(2):
            answer = certificates.post(
                f"/v1/bookings/{booking_id}/certificate",
                files={"file": ("intyg.pdf", b"%PDF-1.7", "application/pdf")},
                headers=party.provider,
            )
            assert answer.status_code == 409, answer.text
        mine = open_connections(booking_server) - others
        assert len(mine) == 1

    assert still_open_after_a_while(booking_server, mine) == set()
