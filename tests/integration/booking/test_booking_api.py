"""The booking service over HTTP on both stores: the status life cycle, who sees what, lists,
read-your-writes, If-Match, Idempotency-Key, consent and review, and the internal routes."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import uuid4

import httpx
import pytest
from fastapi.testclient import TestClient

from services.booking.main import create_app
from services.booking.settings import BookingSettings
from shared.auth import mint_token
from tests.fixtures.booking_flows import MIN_POSITION, POSITION, BookingFlows
from tests.fixtures.stores import AUTH_SECRET, Tokens


def error_code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


def item_ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["booking_id"] for item in response.json()["items"]]


def second_product(bookings: BookingFlows) -> str:
    response = bookings.client.post(
        "/v1/products",
        json={"provider_id": bookings.catalog.provider_id, "title": "Agil ledning"},
        headers=bookings.provider,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["product_id"])


def record_certificate(bookings: BookingFlows, booking_id: str, **overrides: Any) -> httpx.Response:
    body = {
        "certificate_id": str(uuid4()),
        "sha256": "c0ffee" + "0" * 58,
        "size": 2048,
        "page_count": 1,
        "file_name": "intyg.pdf",
        "contains_results": False,
        "uploaded_by": {"id": "prov-user", "role": "provider"},
        **overrides,
    }
    return bookings.client.post(
        f"/internal/v1/bookings/{booking_id}/certificates",
        json=body,
        headers=bookings.tokens("service", "service:certificate"),
    )


# --- the status life cycle -------------------------------------------------------------------


def test_request_accept_start_complete_then_illegal_changes(bookings: BookingFlows) -> None:
    anna = bookings.participant_token("anna")

    requested = bookings.request("anna")
    booking = requested.json()
    booking_id = booking["booking_id"]
    assert (booking["state"], booking["status"], booking["version"]) == ("requested", "unknown", 1)
    assert booking["status_label"] == {"en": "Unknown", "sv": "Okänt"}
    assert int(requested.headers[POSITION]) >= 1

    accepted = bookings.accept(booking_id)
    assert accepted.status_code == 200, accepted.text
    assert (accepted.json()["state"], accepted.json()["status"]) == ("accepted", "enrolled")
    assert accepted.headers["ETag"] == '"2"'

    for version, status, label in ((3, "started", "Startat"), (4, "completed", "Fullföljd")):
        changed = bookings.set_status(booking_id, status)
        assert changed.status_code == 200, changed.text
        assert (changed.json()["status"], changed.json()["version"]) == (status, version)
        assert changed.json()["status_label"]["sv"] == label
        assert int(changed.headers[POSITION]) > int(requested.headers[POSITION])

    seen = bookings.client.get(f"/v1/bookings/{booking_id}", headers={**anna, MIN_POSITION: changed.headers[POSITION]})
    assert seen.status_code == 200, seen.text
    assert (seen.json()["status"], seen.json()["version"]) == ("completed", 4)

    same_again = bookings.set_status(booking_id, "completed")
    assert same_again.status_code == 200
    assert POSITION not in same_again.headers
    assert same_again.json()["version"] == 4

    not_settable = bookings.set_status(booking_id, "unknown")
    assert (not_settable.status_code, error_code(not_settable)) == (422, "invalid_status")
    not_a_status = bookings.set_status(booking_id, "graduated")
    assert (not_a_status.status_code, error_code(not_a_status)) == (422, "validation_error")

    assert bookings.event_names(booking_id) == ["BookingRequested", "Accepted", "StatusChanged", "StatusChanged"]


def test_a_booking_that_is_not_accepted_or_closed_cannot_change_status(bookings: BookingFlows) -> None:
    pending = bookings.requested("anna")
    declined = bookings.requested("bert")
    cancelled = bookings.accepted("carl")
    decline = bookings.client.post(
        f"/v1/bookings/{declined}/decline", json={"reason": "full"}, headers=bookings.provider
    )
    assert decline.status_code == 200, decline.text
    cancel = bookings.client.post(
        f"/v1/bookings/{cancelled}/cancel", json={"reason": "sick"}, headers=bookings.participant_token("carl")
    )
    assert cancel.status_code == 200, cancel.text
    before = bookings.last_position()

    for booking_id, code in (
        (pending, "booking_not_accepted"),
        (declined, "booking_closed"),
        (cancelled, "booking_closed"),
    ):
        refused = bookings.set_status(booking_id, "started")
        assert (refused.status_code, error_code(refused)) == (409, code), refused.text
        assert refused.json()["error"]["message"]
    reaccept = bookings.accept(declined)
    assert (reaccept.status_code, error_code(reaccept)) == (409, "booking_closed")
    assert bookings.last_position() == before


# --- who sees what -------------------------------------------------------------------------------


def test_a_participant_sees_and_acts_on_their_own_booking_only(bookings: BookingFlows) -> None:
    booking_id = bookings.accepted("anna")
    anna, bert = bookings.participant_token("anna"), bookings.participant_token("bert")
    before = bookings.last_position()

    assert bookings.get(booking_id, anna).status_code == 200
    for response in (
        bookings.get(booking_id, bert),
        bookings.client.post(f"/v1/bookings/{booking_id}/cancel", json={"reason": "x"}, headers=bert),
        bookings.client.post(f"/v1/bookings/{booking_id}/consent", json={"given": True}, headers=bert),
        bookings.set_status(booking_id, "started", headers=bert),
    ):
        assert (response.status_code, error_code(response)) == (404, "not_found"), response.text
    assert item_ids(bookings.list(bert)) == []
    own_status_change = bookings.set_status(booking_id, "completed", headers=anna)
    assert (own_status_change.status_code, error_code(own_status_change)) == (403, "forbidden")
    assert bookings.last_position() == before


def test_someone_else_cannot_request_a_booking_in_a_participants_name(bookings: BookingFlows) -> None:
    body = {"product_id": bookings.catalog.product_id, "participant": {"id": "anna", "name": "A", "email": "a@b.se"}}
    response = bookings.client.post("/v1/bookings", json=body, headers=bookings.participant_token("bert"))
    assert (response.status_code, error_code(response)) == (403, "forbidden")
    on_behalf = bookings.client.post("/v1/bookings", json=body, headers=bookings.tokens("staff"))
    assert on_behalf.status_code == 201, on_behalf.text


def test_only_the_provider_of_the_product_sees_the_booking_others_get_404(bookings: BookingFlows) -> None:
    booking_id = bookings.requested("anna")
    _, stranger = bookings.other_provider()
    unregistered = bookings.tokens("provider", "ghost", provider_id=str(uuid4()))
    before = bookings.last_position()

    for provider in (stranger, unregistered):
        for response in (
            bookings.get(booking_id, provider),
            bookings.accept(booking_id, headers=provider),
            bookings.set_status(booking_id, "started", headers=provider),
            bookings.client.post(f"/v1/bookings/{booking_id}/decline", json={"reason": "no"}, headers=provider),
        ):
            assert (response.status_code, error_code(response)) == (404, "not_found"), response.text
        assert item_ids(bookings.list(provider)) == []
    assert bookings.last_position() == before

    assert bookings.get(booking_id, bookings.provider).status_code == 200
    assert bookings.accept(booking_id).status_code == 200


def test_an_employer_sees_their_employees_bookings_only(bookings: BookingFlows) -> None:
    anna = bookings.requested("anna", employer_id="acme")
    bert = bookings.requested("bert", employer_id="globex")
    carl = bookings.requested("carl")
    acme = bookings.tokens("employer", "hr-acme", employer_id="acme")

    listed = bookings.list(acme)
    assert item_ids(listed) == [anna]
    assert bookings.get(anna, acme).status_code == 200
    for hidden in (bert, carl):
        response = bookings.get(hidden, acme)
        assert (response.status_code, error_code(response)) == (404, "not_found")
    accept = bookings.accept(anna, headers=acme)
    assert (accept.status_code, error_code(accept)) == (403, "forbidden")
    cancel = bookings.client.post(f"/v1/bookings/{anna}/cancel", json={"reason": "budget"}, headers=acme)
    assert (cancel.status_code, error_code(cancel)) == (403, "forbidden")
    assert bookings.event_names(anna) == ["BookingRequested"]


def test_staff_see_and_act_on_everything(bookings: BookingFlows) -> None:
    stranger_id, stranger = bookings.other_provider()
    product = bookings.client.post(
        "/v1/products", json={"provider_id": stranger_id, "title": "Excel"}, headers=stranger
    )
    assert product.status_code == 201, product.text
    mine = bookings.requested("anna", employer_id="acme")
    theirs = bookings.requested("bert", product_id=product.json()["product_id"])
    staff = bookings.tokens("staff")

    listed = bookings.list(staff)
    assert sorted(item_ids(listed)) == sorted([mine, theirs])
    accepted = bookings.accept(theirs, headers=staff)
    assert accepted.status_code == 200, accepted.text
    changed = bookings.set_status(theirs, "no_show", headers=staff)
    assert changed.json()["status"] == "no_show"
    assert bookings.get(mine, staff).status_code == 200


BAD_TOKENS = {
    "none": ({}, "token_missing"),
    "basic": ({"Authorization": "Basic YWxhZGRpbjpvcGVuc2VzYW1l"}, "token_missing"),
    "garbage": ({"Authorization": "Bearer not.a.jwt"}, "token_invalid"),
    "forged": (
        {"Authorization": "Bearer " + mint_token(secret="another-secret-of-enough-length-000", role="staff", sub="x")},
        "token_invalid",
    ),
    "expired": (
        {"Authorization": "Bearer " + mint_token(secret=AUTH_SECRET, role="staff", sub="x", ttl_s=-600)},
        "token_expired",
    ),
    "provider without provider_id": (
        {"Authorization": "Bearer " + mint_token(secret=AUTH_SECRET, role="provider", sub="x")},
        "token_invalid",
    ),
}


def test_requests_without_a_valid_token_get_401(bookings: BookingFlows, subtests: pytest.Subtests) -> None:
    booking_id = bookings.accepted("anna")
    before = bookings.last_position()

    for name, (headers, code) in BAD_TOKENS.items():
        with subtests.test(msg=name):
            for response in (
                bookings.client.get("/v1/bookings", headers=headers),
                bookings.client.get(f"/v1/bookings/{booking_id}", headers=headers),
                bookings.client.post(f"/v1/bookings/{booking_id}/status", json={"status": "started"}, headers=headers),
                bookings.client.post(
                    f"/v1/bookings/{booking_id}/status",
                    json={"status": "started"},
                    headers={**headers, "Idempotency-Key": "k-1"},
                ),
            ):
                assert (response.status_code, error_code(response)) == (401, code), response.text
    assert bookings.last_position() == before


# --- lists ------------------------------------------------------------------------------------


def test_lists_filter_by_status_and_product(bookings: BookingFlows) -> None:
    other_product = second_product(bookings)
    started = bookings.accepted("anna")
    bookings.set_status(started, "started")
    enrolled = bookings.accepted("bert")
    unknown = bookings.requested("carl", product_id=other_product)
    staff = bookings.tokens("staff")

    def listing(**params: str) -> list[str]:
        return sorted(item_ids(bookings.list(staff, **params)))

    assert listing(status="started") == [started]
    assert listing(status="enrolled") == [enrolled]
    assert listing(status="unknown") == [unknown]
    assert listing(status="completed") == []
    assert listing(product_id=other_product) == [unknown]
    assert listing(product_id=bookings.catalog.product_id) == sorted([started, enrolled])
    assert listing(product_id=bookings.catalog.product_id, status="enrolled") == [enrolled]
    anna = bookings.participant_token("anna")
    assert item_ids(bookings.list(anna, status="enrolled")) == []


def test_cursor_pages_have_no_duplicates_or_gaps_while_bookings_are_added(bookings: BookingFlows) -> None:
    existing = [bookings.requested(f"p{i}") for i in range(7)]
    staff = bookings.tokens("staff")
    seen: list[str] = []
    added: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        page = bookings.list(staff, **params)
        seen += item_ids(page)
        pages += 1
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
        if pages <= 3:  # new bookings arrive while the client is paging
            added.append(bookings.requested(f"late{pages}"))
    assert len(seen) == len(set(seen)), "a booking appeared on two pages"
    assert set(seen) == set(existing) | set(added)
    assert seen[: len(existing)] == existing, "pages follow the order in which bookings were requested"


# --- read-your-writes, If-Match, Idempotency-Key ---------------------------------------------------


def test_event_position_lets_the_next_read_see_the_write(bookings: BookingFlows) -> None:
    booking_id = bookings.accepted("anna")
    staff = bookings.tokens("staff")
    for status in ("started", "no_show", "failed", "completed", "enrolled"):
        changed = bookings.set_status(booking_id, status)
        position = changed.headers[POSITION]
        detail = bookings.client.get(f"/v1/bookings/{booking_id}", headers={**staff, MIN_POSITION: position})
        assert detail.json()["status"] == status
        listed = bookings.client.get(
            "/v1/bookings", params={"status": status}, headers={**staff, MIN_POSITION: position}
        )
        assert item_ids(listed) == [booking_id]


def test_a_read_waits_for_a_lagging_read_model_then_says_retry(service_env: dict[str, Any], tokens: Tokens) -> None:
    # No projection runs here, so the read model never reaches the write.
    settings = BookingSettings(**service_env | {"run_workers": False, "read_your_writes_timeout_s": 0.2})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        staff = tokens("staff")
        written = client.post("/v1/providers", json={"name": "Kurs AB"}, headers=staff)
        behind = client.get("/v1/bookings", headers={**staff, MIN_POSITION: written.headers[POSITION]})
        past_the_end = client.get(
            "/v1/bookings", headers={**staff, MIN_POSITION: str(int(written.headers[POSITION]) + 1)}
        )
    assert (behind.status_code, error_code(behind)) == (503, "read_model_behind")
    assert behind.headers["Retry-After"] == "1"
    assert (past_the_end.status_code, error_code(past_the_end)) == (422, "invalid_min_position")


def test_if_match_applies_on_the_current_version_and_refuses_a_stale_one(bookings: BookingFlows) -> None:
    booking_id = bookings.accepted("anna")
    started = bookings.set_status(booking_id, "started")
    version = started.json()["version"]
    assert started.headers["ETag"] == f'"{version}"'
    before = bookings.last_position()

    stale = bookings.client.post(
        f"/v1/bookings/{booking_id}/status",
        json={"status": "completed"},
        headers={**bookings.provider, "If-Match": f'"{version - 1}"'},
    )
    assert (stale.status_code, error_code(stale)) == (412, "version_mismatch")
    assert str(version) in stale.json()["error"]["message"]
    assert bookings.last_position() == before

    for if_match, status in (
        (f'"{version}"', "completed"),
        (f'W/"{version + 1}"', "failed"),
        (str(version + 2), "started"),
    ):
        current = bookings.client.post(
            f"/v1/bookings/{booking_id}/status",
            json={"status": status},
            headers={**bookings.provider, "If-Match": if_match},
        )
        assert current.status_code == 200, current.text
        assert current.json()["status"] == status
    assert bookings.event_names(booking_id).count("StatusChanged") == 4


def test_a_retried_command_with_the_same_idempotency_key_runs_once(bookings: BookingFlows) -> None:
    anna = bookings.participant_token("anna")
    body = {"product_id": bookings.catalog.product_id, "participant": {"id": "anna", "name": "A", "email": "a@b.se"}}
    keyed = {**anna, "Idempotency-Key": "booking-anna-1"}

    first = bookings.client.post("/v1/bookings", json=body, headers=keyed)
    after_first = bookings.last_position()
    retry = bookings.client.post("/v1/bookings", json=body, headers=keyed)

    assert first.status_code == retry.status_code == 201
    assert retry.json() == first.json()
    assert retry.headers[POSITION] == first.headers[POSITION]
    assert retry.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert bookings.last_position() == after_first

    booking_id = first.json()["booking_id"]
    assert bookings.accept(booking_id).status_code == 200
    status_key = {**bookings.provider, "Idempotency-Key": "status-1"}
    changed = bookings.client.post(f"/v1/bookings/{booking_id}/status", json={"status": "started"}, headers=status_key)
    again = bookings.client.post(f"/v1/bookings/{booking_id}/status", json={"status": "started"}, headers=status_key)
    assert again.json() == changed.json()
    assert bookings.event_names(booking_id) == ["BookingRequested", "Accepted", "StatusChanged"]

    before = bookings.last_position()
    reused = bookings.client.post(f"/v1/bookings/{booking_id}/status", json={"status": "failed"}, headers=status_key)
    assert (reused.status_code, error_code(reused)) == (422, "idempotency_key_reused")
    assert bookings.last_position() == before

    # Keys belong to their caller: staff using the same key runs its own command.
    staff_key = {**bookings.tokens("staff"), "Idempotency-Key": "status-1"}
    by_staff = bookings.client.post(f"/v1/bookings/{booking_id}/status", json={"status": "failed"}, headers=staff_key)
    assert by_staff.status_code == 200 and by_staff.json()["status"] == "failed"


def test_a_refused_command_is_replayed_as_refused(bookings: BookingFlows) -> None:
    booking_id = bookings.requested("anna")
    keyed = {**bookings.provider, "Idempotency-Key": "early-status"}
    first = bookings.client.post(f"/v1/bookings/{booking_id}/status", json={"status": "started"}, headers=keyed)
    assert bookings.accept(booking_id).status_code == 200
    retry = bookings.client.post(f"/v1/bookings/{booking_id}/status", json={"status": "started"}, headers=keyed)
    assert (first.status_code, retry.status_code) == (409, 409)
    assert retry.json() == first.json()
    assert bookings.event_names(booking_id) == ["BookingRequested", "Accepted"]


# --- consent, review, certificates -----------------------------------------------------------------


def test_consent_and_review_are_the_participants_own(bookings: BookingFlows) -> None:
    booking_id = bookings.completed("anna")
    anna = bookings.participant_token("anna")
    before = bookings.last_position()

    for headers, status in (
        (bookings.provider, 403),
        (bookings.tokens("staff"), 403),
        (bookings.participant_token("bert"), 404),
        (bookings.tokens("employer", "hr", employer_id="acme"), 404),
    ):
        consent = bookings.client.post(f"/v1/bookings/{booking_id}/consent", json={"given": True}, headers=headers)
        review = bookings.client.post(f"/v1/bookings/{booking_id}/review", json={"rating": 5}, headers=headers)
        assert (consent.status_code, review.status_code) == (status, status), (consent.text, review.text)
    assert bookings.last_position() == before

    consent = bookings.client.post(f"/v1/bookings/{booking_id}/consent", json={"given": True}, headers=anna)
    assert consent.status_code == 200 and consent.json()["results_consent"] is True
    review = bookings.client.post(f"/v1/bookings/{booking_id}/review", json={"rating": 4, "text": "Bra"}, headers=anna)
    assert review.status_code == 200, review.text
    assert review.json()["review"] == {"rating": 4, "text": "Bra"}
    detail = bookings.get(booking_id, anna)
    assert detail.json()["review"] == {"rating": 4, "text": "Bra"}
    assert detail.json()["results_consent"] is True


def test_a_review_before_completion_is_refused(bookings: BookingFlows) -> None:
    booking_id = bookings.accepted("anna")
    review = bookings.client.post(
        f"/v1/bookings/{booking_id}/review", json={"rating": 5}, headers=bookings.participant_token("anna")
    )
    assert (review.status_code, error_code(review)) == (409, "booking_not_completed")


def test_review_links_to_linkedin_only_while_the_certificate_is_valid(bookings: BookingFlows) -> None:
    booking_id = bookings.completed("anna")
    anna = bookings.participant_token("anna")

    def review() -> dict[str, Any]:
        response = bookings.client.post(f"/v1/bookings/{booking_id}/review", json={"rating": 5}, headers=anna)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    assert review()["linkedin_add_url"] is None

    certificate_id = str(uuid4())
    recorded = record_certificate(bookings, booking_id, certificate_id=certificate_id)
    assert recorded.status_code == 201, recorded.text
    assert recorded.json()["certificate"]["certificate_id"] == certificate_id
    detail = bookings.get(booking_id, anna)
    assert detail.json()["certificate"]["certificate_id"] == certificate_id
    assert detail.json()["certificate"]["issued_at"] == recorded.json()["certificate"]["issued_at"]

    url = review()["linkedin_add_url"]
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert url.startswith("https://www.linkedin.com/profile/add?")
    assert query["name"] == "Certifierad projektledare"
    assert query["organizationId"] == "1337"
    assert query["certId"] == certificate_id
    assert query["certUrl"].endswith(f"/verify/{certificate_id}")
    assert 1 <= int(query["issueMonth"]) <= 12

    revoked = bookings.client.post(
        f"/internal/v1/bookings/{booking_id}/certificates/{certificate_id}/revoke",
        json={"reason": "issued to the wrong person"},
        headers=bookings.provider,
    )
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["certificate"] is None
    assert review()["linkedin_add_url"] is None
    assert bookings.get(booking_id, anna).json()["certificate"] is None


def test_leaving_completed_revokes_the_certificate_in_the_read_model(bookings: BookingFlows) -> None:
    booking_id = bookings.completed("anna")
    assert record_certificate(bookings, booking_id).status_code == 201
    changed = bookings.set_status(booking_id, "failed")
    assert changed.json()["certificate"] is None
    assert bookings.event_names(booking_id)[-2:] == ["StatusChanged", "CertificateRevoked"]
    assert bookings.get(booking_id, bookings.provider).json()["certificate"] is None


def test_internal_routes_refuse_callers_that_are_not_services(bookings: BookingFlows) -> None:
    booking_id = bookings.completed("anna")
    body = {
        "certificate_id": str(uuid4()),
        "sha256": "a" * 64,
        "size": 10,
        "page_count": 1,
        "file_name": "x.pdf",
        "contains_results": False,
        "uploaded_by": {"id": "prov-user", "role": "provider"},
    }
    before = bookings.last_position()
    for headers in (bookings.provider, bookings.tokens("staff"), bookings.participant_token("anna")):
        response = bookings.client.post(f"/internal/v1/bookings/{booking_id}/certificates", json=body, headers=headers)
        assert (response.status_code, error_code(response)) == (403, "forbidden"), response.text
    no_token = bookings.client.post(f"/internal/v1/bookings/{booking_id}/certificates", json=body)
    assert no_token.status_code == 401
    assert bookings.last_position() == before


def test_the_upload_check_answers_with_the_rules_of_the_upload(bookings: BookingFlows) -> None:
    completed = bookings.completed("anna")
    started = bookings.accepted("bert")
    bookings.set_status(started, "started")

    def check(booking_id: str, headers: dict[str, str], contains_results: bool = False) -> httpx.Response:
        return bookings.client.post(
            f"/internal/v1/bookings/{booking_id}/certificates/check",
            json={"contains_results": contains_results},
            headers=headers,
        )

    assert check(completed, bookings.provider).status_code == 204
    for response, status, code in (
        (check(started, bookings.provider), 409, "booking_not_completed"),
        (check(completed, bookings.provider, contains_results=True), 409, "results_consent_missing"),
        (check(completed, bookings.participant_token("anna")), 403, "forbidden"),
        (check(completed, bookings.other_provider()[1]), 404, "not_found"),
    ):
        assert (response.status_code, error_code(response)) == (status, code), response.text


def test_a_recorded_upload_must_be_to_a_booking_of_the_uploaders_provider(bookings: BookingFlows) -> None:
    """The certificate service names the uploader's provider; the record then refuses as the check does."""
    booking_id = bookings.completed("anna")
    other_provider_id, _ = bookings.other_provider()
    before = bookings.last_position()

    def uploaded_by(provider_id: str) -> dict[str, str]:
        return {"id": "prov-user", "role": "provider", "provider_id": provider_id}

    refused = record_certificate(bookings, booking_id, uploaded_by=uploaded_by(other_provider_id))
    assert (refused.status_code, error_code(refused)) == (404, "not_found"), refused.text
    assert bookings.last_position() == before
    recorded = record_certificate(bookings, booking_id, uploaded_by=uploaded_by(bookings.catalog.provider_id))
    assert recorded.status_code == 201, recorded.text


def test_upload_without_a_certification_says_what_to_do(bookings: BookingFlows) -> None:
    product_id = second_product(bookings)  # registered without a certification
    booking_id = bookings.completed("anna", product_id=product_id)
    before = bookings.last_position()

    refused = record_certificate(bookings, booking_id)

    assert (refused.status_code, error_code(refused)) == (409, "certification_missing")
    assert "add a certification to the product first" in refused.json()["error"]["message"]
    assert bookings.last_position() == before
