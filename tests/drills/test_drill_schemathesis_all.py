"""Drill: the booking API's schemathesis fuzz (tests/integration/booking/test_booking_schemathesis.py)
applied to the certificate and notifier services' OpenAPI documents.

Every operation gets generated valid and invalid requests, each with a staff, provider or
participant token; path ids are pointed at a real booking, certificate or notification so that
the generated input reaches the domain. No answer may be a 5xx.
"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis import GenerationMode

from tests.fixtures.fuzz import GENERATION_MODES, fuzz_every_operation, schema_of
from tests.fixtures.notifier import NotifierFlow, wait_until
from tests.fixtures.services import CertificateScenario
from tests.fixtures.verification import VerificationFlows

pytestmark = pytest.mark.drill

# Per operation; keeps each spec under a minute on a busy two-core machine.
EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 15}


@pytest.fixture
def store() -> str:
    """SQLite only: the HTTP layer under test is the same on both stores (as in the booking fuzz)."""
    return "sqlite"


def point_at(case: schemathesis.Case, real_ids: dict[str, str]) -> None:
    for name, value in real_ids.items():
        if name in (case.path_parameters or {}):
            case.path_parameters[name] = value


@pytest.mark.parametrize("mode", GENERATION_MODES, ids=lambda m: m.value)
def test_certificate_api_never_answers_a_server_error(
    mode: GenerationMode,
    certificate_scenario: CertificateScenario,
    verification: VerificationFlows,
    subtests: pytest.Subtests,
) -> None:
    party = certificate_scenario.provider()
    booking_id = certificate_scenario.booking_for(party, "anna")
    issued = verification.issue(party, booking_id)
    client = certificate_scenario.certificates
    tokens = certificate_scenario.tokens

    ran = fuzz_every_operation(
        schema=schema_of(client),
        client=client,
        mode=mode,
        examples=EXAMPLES[mode],
        tokens=[certificate_scenario.staff, party.provider, tokens("participant", "anna")],
        subtests=subtests,
        prepare=lambda case: point_at(case, {"booking_id": booking_id, "certificate_id": issued.certificate_id}),
    )
    assert ran >= 8


@pytest.mark.parametrize("mode", GENERATION_MODES, ids=lambda m: m.value)
def test_notifier_api_never_answers_a_server_error(
    mode: GenerationMode, notifier_flow: NotifierFlow, notifier_client: TestClient, subtests: pytest.Subtests
) -> None:
    booking_id = notifier_flow.completed("anna")
    [notification, *_] = wait_until(lambda: notifier_flow.listed(booking_id), what="a scheduled notification")
    tokens = notifier_flow.tokens

    ran = fuzz_every_operation(
        schema=schema_of(notifier_client),
        client=notifier_client,
        mode=mode,
        examples=EXAMPLES[mode],
        tokens=[tokens("staff"), notifier_flow.bookings.provider, tokens("participant", "anna")],
        subtests=subtests,
        prepare=lambda case: point_at(
            case, {"booking_id": booking_id, "notification_id": str(notification["notification_id"])}
        ),
    )
    assert ran >= 3
