"""Bad input to the booking service: a clear 4xx with a stable error code, and nothing stored.

One booking service per store serves every case (each case is a subtest): starting a service
per case would cost more than the cases themselves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import pytest
from fastapi.testclient import TestClient

from shared.auth import mint_token
from tests.fixtures.booking_flows import BookingFlows
from tests.fixtures.stores import AUTH_SECRET

UNKNOWN_ID = "0b6f3f0e-6a57-4f0b-9d3c-2f1f8c1e5a01"


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    """With {booking} (accepted, anna's), {completed} (anna's), {product}, {unknown}."""
    status: int
    code: str
    who: str = "provider"
    """provider | other_provider | anna | staff | service | expired | forged"""
    body: Any = None
    """JSON-encoded unless `raw`."""
    raw: bytes | None = None
    headers: dict[str, str | bytes] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


def booking_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "product_id": "{product}",
        "participant": {"id": "anna", "name": "Anna Svensson", "email": "anna@example.se", "locale": "sv"},
    }
    body.update(overrides)
    return body


def participant_with(**overrides: Any) -> dict[str, Any]:
    return booking_body(participant={"id": "anna", "name": "Anna", "email": "anna@example.se", **overrides})


def record_body(**overrides: Any) -> dict[str, Any]:
    return {
        "certificate_id": str(uuid4()),
        "sha256": "a" * 64,
        "size": 10,
        "page_count": 1,
        "file_name": "x.pdf",
        "contains_results": False,
        "uploaded_by": {"id": "prov-user", "role": "provider"},
        **overrides,
    }


STATUS = "/v1/bookings/{booking}/status"
REVIEW = "/v1/bookings/{completed}/review"
CONSENT = "/v1/bookings/{booking}/consent"
RECORD = "/internal/v1/bookings/{completed}/certificates"
JSON = {"content-type": "application/json"}

CASES = [
    # participation status
    Case("status not in the list", "POST", STATUS, 422, "validation_error", body={"status": "graduated"}),
    Case("status unknown cannot be set", "POST", STATUS, 422, "invalid_status", body={"status": "unknown"}),
    Case("status in capitals", "POST", STATUS, 422, "validation_error", body={"status": "STARTED"}),
    Case("status missing", "POST", STATUS, 422, "validation_error", body={}),
    Case("status null", "POST", STATUS, 422, "validation_error", body={"status": None}),
    Case("status as a number", "POST", STATUS, 422, "validation_error", body={"status": 3}),
    Case("status with an extra field", "POST", STATUS, 422, "validation_error", body={"status": "started", "x": 1}),
    Case("status without a body", "POST", STATUS, 422, "validation_error"),
    Case("status body is a list", "POST", STATUS, 422, "validation_error", body=["started"]),
    Case("status body is bad JSON", "POST", STATUS, 422, "validation_error", raw=b'{"status": ', headers=JSON),
    Case("status body is not UTF-8", "POST", STATUS, 400, "bad_request", raw=b"\xff\xfe\x00", headers=JSON),
    Case(
        "status body as text/plain",
        "POST",
        STATUS,
        422,
        "validation_error",
        raw=b'{"status": "started"}',
        headers={"content-type": "text/plain"},
    ),
    Case(
        "status of a malformed booking id",
        "POST",
        "/v1/bookings/not-a-uuid/status",
        422,
        "validation_error",
        body={"status": "started"},
    ),
    Case(
        "status of an unknown booking",
        "POST",
        "/v1/bookings/{unknown}/status",
        404,
        "not_found",
        body={"status": "started"},
    ),
    Case(
        "status of another provider's booking",
        "POST",
        STATUS,
        404,
        "not_found",
        who="other_provider",
        body={"status": "started"},
    ),
    Case(
        "status with an expired token", "POST", STATUS, 401, "token_expired", who="expired", body={"status": "started"}
    ),
    Case("status with a forged token", "POST", STATUS, 401, "token_invalid", who="forged", body={"status": "started"}),
    Case(
        "If-Match that is not a version",
        "POST",
        STATUS,
        422,
        "invalid_if_match",
        body={"status": "started"},
        headers={"If-Match": '"abc"'},
    ),
    Case(
        "If-Match with a superscript digit",
        "POST",
        STATUS,
        422,
        "invalid_if_match",
        body={"status": "started"},
        headers={"If-Match": b"\xb2"},
    ),  # latin-1 "²": str.isdigit() says yes, int() says no
    Case(
        "Idempotency-Key too long",
        "POST",
        STATUS,
        422,
        "invalid_idempotency_key",
        body={"status": "started"},
        headers={"Idempotency-Key": "k" * 201},
    ),
    Case(
        "oversized body", "POST", STATUS, 413, "payload_too_large", body={"status": "started", "padding": "x" * 70_000}
    ),
    # requesting a booking
    Case(
        "booking without participant",
        "POST",
        "/v1/bookings",
        422,
        "validation_error",
        who="staff",
        body={"product_id": "{product}"},
    ),
    Case(
        "booking with a malformed product id",
        "POST",
        "/v1/bookings",
        422,
        "validation_error",
        who="staff",
        body=booking_body(product_id="12345"),
    ),
    Case(
        "booking of an unknown product",
        "POST",
        "/v1/bookings",
        404,
        "not_found",
        who="staff",
        body=booking_body(product_id=UNKNOWN_ID),
    ),
    Case(
        "booking with an e-mail without @",
        "POST",
        "/v1/bookings",
        422,
        "validation_error",
        who="staff",
        body=participant_with(email="anna.example.se"),
    ),
    Case(
        "booking with an empty name",
        "POST",
        "/v1/bookings",
        422,
        "validation_error",
        who="staff",
        body=participant_with(name="   "),
    ),
    Case(
        "booking with NUL in the participant id",
        "POST",
        "/v1/bookings",
        422,
        "validation_error",
        who="staff",
        body=participant_with(id="an\u0000na"),
    ),
    Case(
        "booking with a line break in the name",
        "POST",
        "/v1/bookings",
        422,
        "validation_error",
        who="staff",
        body=participant_with(name="Anna\r\nBcc: x@y.z"),
    ),
    Case(
        "booking with an unknown locale format",
        "POST",
        "/v1/bookings",
        422,
        "validation_error",
        who="staff",
        body=participant_with(locale="svenska"),
    ),
    Case(
        "booking with an extra field",
        "POST",
        "/v1/bookings",
        422,
        "validation_error",
        who="staff",
        body=booking_body(status="completed"),
    ),
    Case(
        "booking with a name of 201 characters",
        "POST",
        "/v1/bookings",
        422,
        "validation_error",
        who="staff",
        body=participant_with(name="a" * 201),
    ),
    Case("booking in someone else's name", "POST", "/v1/bookings", 403, "forbidden", who="bert", body=booking_body()),
    Case(
        "booking id already used",
        "POST",
        "/v1/bookings",
        409,
        "booking_exists",
        who="staff",
        body=booking_body(booking_id="{booking}"),
    ),
    # consent and review
    Case("consent as a string", "POST", CONSENT, 422, "validation_error", who="anna", body={"given": "true"}),
    Case("consent as a number", "POST", CONSENT, 422, "validation_error", who="anna", body={"given": 1}),
    Case("rating as a float", "POST", REVIEW, 422, "validation_error", who="anna", body={"rating": 4.5}),
    Case("rating as a string", "POST", REVIEW, 422, "validation_error", who="anna", body={"rating": "5"}),
    Case("rating as a bool", "POST", REVIEW, 422, "validation_error", who="anna", body={"rating": True}),
    Case("rating 0", "POST", REVIEW, 422, "validation_error", who="anna", body={"rating": 0}),
    Case("rating 6", "POST", REVIEW, 422, "validation_error", who="anna", body={"rating": 6}),
    Case(
        "review text with NUL",
        "POST",
        REVIEW,
        422,
        "validation_error",
        who="anna",
        body={"rating": 5, "text": "bra\u0000"},
    ),
    Case(
        "review text too long",
        "POST",
        REVIEW,
        422,
        "validation_error",
        who="anna",
        body={"rating": 5, "text": "x" * 5001},
    ),
    Case(
        "decline without a reason",
        "POST",
        "/v1/bookings/{completed}/decline",
        422,
        "validation_error",
        body={"reason": " "},
    ),
    Case(
        "cancel of an unknown booking", "POST", "/v1/bookings/{unknown}/cancel", 404, "not_found", body={"reason": "x"}
    ),
    # catalog
    Case(
        "provider with a non-numeric LinkedIn id",
        "POST",
        "/v1/providers",
        422,
        "validation_error",
        who="staff",
        body={"name": "X", "linkedin_organization_id": "acme"},
    ),
    Case(
        "provider with a javascript: logo",
        "POST",
        "/v1/providers",
        422,
        "validation_error",
        who="staff",
        body={"name": "X", "logo_url": "javascript:alert(1)"},
    ),
    Case("provider registered by a provider", "POST", "/v1/providers", 403, "forbidden", body={"name": "X"}),
    Case(
        "certification of an unknown product",
        "PUT",
        "/v1/products/{unknown}/certification",
        404,
        "not_found",
        body={"name": "X"},
    ),
    Case(
        "product of an unknown provider",
        "POST",
        "/v1/products",
        404,
        "not_found",
        who="staff",
        body={"provider_id": UNKNOWN_ID, "title": "X"},
    ),
    # the internal route of the certificate service
    Case(
        "certificate with a bad sha256",
        "POST",
        RECORD,
        422,
        "validation_error",
        who="service",
        body=record_body(sha256="xyz"),
    ),
    Case("certificate of size 0", "POST", RECORD, 422, "validation_error", who="service", body=record_body(size=0)),
    Case(
        "certificate uploaded by a participant",
        "POST",
        RECORD,
        422,
        "validation_error",
        who="service",
        body=record_body(uploaded_by={"id": "anna", "role": "participant"}),
    ),
    Case(
        "certificate with results but no consent",
        "POST",
        RECORD,
        409,
        "results_consent_missing",
        who="service",
        body=record_body(contains_results=True),
    ),
    Case(
        "certificate for a booking not completed",
        "POST",
        "/internal/v1/bookings/{booking}/certificates",
        409,
        "booking_not_completed",
        who="service",
        body=record_body(),
    ),
    Case(
        "revoke of an unknown certificate",
        "POST",
        "/internal/v1/bookings/{completed}/certificates/{unknown}/revoke",
        409,
        "certificate_unknown",
        body={"reason": "x"},
    ),
    # reads (nothing could be written anyway; the answer must still be a 4xx)
    Case("detail of a malformed id", "GET", "/v1/bookings/123", 422, "validation_error"),
    Case("detail of an unknown booking", "GET", "/v1/bookings/{unknown}", 404, "not_found"),
    Case(
        "detail of another provider's booking", "GET", "/v1/bookings/{booking}", 404, "not_found", who="other_provider"
    ),
    Case("list with an unknown status", "GET", "/v1/bookings", 422, "validation_error", params={"status": "graduated"}),
    Case(
        "list with a malformed product id", "GET", "/v1/bookings", 422, "validation_error", params={"product_id": "x"}
    ),
    Case("list with limit 0", "GET", "/v1/bookings", 422, "validation_error", params={"limit": "0"}),
    Case("list with limit 1000", "GET", "/v1/bookings", 422, "validation_error", params={"limit": "1000"}),
    Case("list with a made-up cursor", "GET", "/v1/bookings", 422, "invalid_cursor", params={"cursor": "abc"}),
    Case(
        "list with a cursor of the right shape but made up",
        "GET",
        "/v1/bookings",
        422,
        "invalid_cursor",
        params={"cursor": "WyJ4Il0"},
    ),  # ["x"]
    Case(
        "list with a cursor past any position",
        "GET",
        "/v1/bookings",
        422,
        "invalid_cursor",
        params={"cursor": "WyI5OTk5OTk5OTk5OTk5OTk5OTk5OTk5Il0"},
    ),  # ["9999999999999999999999"]
    Case(
        "list with a negative X-Min-Position",
        "GET",
        "/v1/bookings",
        422,
        "validation_error",
        headers={"X-Min-Position": "-1"},
    ),
    Case(
        "list with an X-Min-Position past the last event",
        "GET",
        "/v1/bookings",
        422,
        "invalid_min_position",
        headers={"X-Min-Position": "99999999999999999999"},
    ),
    Case(
        "list with a textual X-Min-Position",
        "GET",
        "/v1/bookings",
        422,
        "validation_error",
        headers={"X-Min-Position": "latest"},
    ),
]


def test_case_names_are_unique() -> None:
    names = [case.name for case in CASES]
    assert len(names) == len(set(names))


def test_bad_input_gets_a_4xx_with_a_stable_code_and_stores_nothing(
    bookings: BookingFlows, subtests: pytest.Subtests
) -> None:
    context = {
        "booking": bookings.accepted("anna"),
        "completed": bookings.completed("anna"),
        "product": bookings.catalog.product_id,
        "unknown": UNKNOWN_ID,
    }
    _, stranger = bookings.other_provider()
    who = {
        "provider": bookings.provider,
        "other_provider": stranger,
        "anna": bookings.participant_token("anna"),
        "bert": bookings.participant_token("bert"),
        "staff": bookings.tokens("staff"),
        "service": bookings.tokens("service", "service:certificate"),
        "expired": {"Authorization": "Bearer " + mint_token(secret=AUTH_SECRET, role="staff", sub="s", ttl_s=-600)},
        "forged": {"Authorization": "Bearer " + mint_token(secret="not-our-secret-" + "0" * 30, role="staff", sub="s")},
    }
    for case in CASES:
        with subtests.test(msg=case.name):
            before = bookings.last_position()
            response = send(bookings.client, case, context, who[case.who])
            assert response.status_code == case.status, response.text
            error = response.json()["error"]
            assert error["code"] == case.code, response.text
            assert error["message"]
            assert bookings.last_position() == before, "bad input wrote an event"


def send(client: TestClient, case: Case, context: dict[str, str], auth: dict[str, str]) -> Any:
    path = case.path.format(**context)
    headers = {**auth, **case.headers}
    if case.raw is not None:
        return client.request(case.method, path, content=case.raw, headers=headers, params=case.params)
    if case.body is None:
        return client.request(case.method, path, headers=headers, params=case.params)
    body = json.loads(
        json.dumps(case.body).replace("{product}", context["product"]).replace("{booking}", context["booking"])
    )
    return client.request(case.method, path, json=body, headers=headers, params=case.params)
