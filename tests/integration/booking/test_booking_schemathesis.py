"""Property-based fuzzing of the booking API from its own OpenAPI document (schemathesis).

Every operation gets generated valid and invalid requests with a staff token; path ids are
pointed at a real provider, product and booking, so the generated bodies reach the domain
instead of stopping at "not found". No answer may be a 5xx, and every answer must match the
documented response schema.
"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.fixtures.booking import Catalog
from tests.fixtures.booking_flows import BookingFlows
from tests.fixtures.fuzz import GENERATION_MODES, fuzz_every_operation, schema_of

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
    return schema_of(booking_client)


@pytest.mark.parametrize("mode", GENERATION_MODES, ids=lambda m: m.value)
def test_no_request_gets_a_server_error_or_an_undocumented_answer(
    mode: GenerationMode,
    booking_schema: schemathesis.BaseSchema,
    booking_client: TestClient,
    real_ids: dict[str, str],
    bookings: BookingFlows,
    subtests: pytest.Subtests,
) -> None:
    ran = fuzz_every_operation(
        schema=booking_schema,
        client=booking_client,
        mode=mode,
        examples=EXAMPLES[mode],
        tokens=[bookings.tokens("staff")],
        subtests=subtests,
        prepare=lambda case: point_at_real_ids(case, real_ids),
        checks=[not_a_server_error, response_schema_conformance],
    )
    assert ran >= 10
