"""Property-based fuzzing of the booking API from its own OpenAPI document (schemathesis).

Every operation gets generated valid and invalid requests with a staff token; path ids are
pointed at a real provider, product and booking, so the generated bodies reach the domain
instead of stopping at "not found". No answer may be a 5xx, and every answer must match the
documented response schema.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.fixtures.booking import Catalog
from tests.fixtures.booking_flows import BookingFlows

# Per operation: ~20 operations, kept under a minute in all on a busy two-core machine.
EXAMPLES = {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 20}


@pytest.fixture
def store() -> str:
    """SQLite only: the HTTP layer under test is the same on both stores, and every behaviour
    is covered on PostgreSQL by the other booking tests; fuzzing twice would double the time."""
    return "sqlite"


@pytest.fixture
def real_ids(bookings: BookingFlows, catalog: Catalog) -> dict[str, str]:
    return {
        "provider_id": catalog.provider_id,
        "product_id": catalog.product_id,
        "booking_id": bookings.completed("anna"),
        # Declining or cancelling closes a booking for good: those get one of their own.
        "closing_booking_id": bookings.requested("bert"),
    }


def point_at_real_ids(case: schemathesis.Case, real_ids: dict[str, str]) -> None:
    closes = case.operation.path.endswith(("/cancel", "/decline"))
    for name in ("provider_id", "product_id", "booking_id"):
        if name in (case.path_parameters or {}):
            case.path_parameters[name] = real_ids["closing_booking_id" if closes and name == "booking_id" else name]


@pytest.fixture
def booking_schema(booking_client: TestClient) -> schemathesis.BaseSchema:
    # From the document: from_asgi's transport would start the app's lifespan a second time,
    # while booking_client has already opened the stores. Requests go through booking_client.
    document = booking_client.get("/openapi.json")
    assert document.status_code == 200
    return schemathesis.openapi.from_dict(document.json())


def send(client: TestClient, case: schemathesis.Case, headers: dict[str, str]) -> httpx.Response:
    """Sends a generated case through the in-process client (requests-style kwargs to httpx)."""
    request = case.as_transport_kwargs(base_url=str(client.base_url), headers=headers)
    body: dict[str, Any] = {}
    if "json" in request:
        body["json"] = request["json"]
    elif isinstance(request.get("data"), str | bytes):
        body["content"] = request["data"]
    elif request.get("data") is not None:
        body["data"] = request["data"]
    return client.request(
        request["method"], request["url"], params=request.get("params"), headers=request["headers"], **body
    )


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_request_gets_a_server_error_or_an_undocumented_answer(
    mode: GenerationMode,
    booking_schema: schemathesis.BaseSchema,
    booking_client: TestClient,
    real_ids: dict[str, str],
    bookings: BookingFlows,
    subtests: pytest.Subtests,
) -> None:
    # schemathesis' own pytest integration (schema.parametrize / from_fixture) does not run under
    # pytest 9 (it reads Function._nodeid), so each operation is a hypothesis test of its own here.
    staff = bookings.tokens("staff")
    operations = [result.ok() for result in booking_schema.get_all_operations()]
    assert len(operations) >= 15

    for operation in operations:
        takes_input = any(True for _ in operation.iter_parameters()) or operation.get_request_payload_content_types()
        if mode is GenerationMode.NEGATIVE and not takes_input:
            continue  # nothing to make invalid (health and metrics)

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES[mode],
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case: schemathesis.Case) -> None:
            point_at_real_ids(case, real_ids)
            response = send(booking_client, case, staff)
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

        with subtests.test(msg=operation.label):
            exercise()
