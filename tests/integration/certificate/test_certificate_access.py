"""Who may read a certificate and its file (every download audited), supersede, revoke, visibility."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

from services.certificate.application import CertificateApplication
from tests.fixtures.services import CertificateScenario, Party

CORPUS = Path(__file__).resolve().parents[3] / ".." / "shared" / "pdf-corpus"
FIRST_PDF = (CORPUS / "004-pdflatex-4-pages" / "pdflatex-4-pages.pdf").read_bytes()
SECOND_PDF = (CORPUS / "001-trivial" / "minimal-document.pdf").read_bytes()


def issue(
    scenario: CertificateScenario, party: Party, booking_id: str, content: bytes = FIRST_PDF, **options: Any
) -> dict[str, Any]:
    """Uploads a certificate and waits until the registry knows it; returns the upload answer."""
    answer = scenario.upload(booking_id, party.provider, content, **options)
    assert answer.status_code == 201, answer.text
    assert scenario.certificate(answer.json()["certificate_id"], answer.headers["x-event-position"]).status_code == 200
    return answer.json()


def downloads_of(scenario: CertificateScenario, certificate_id: str) -> list[tuple[str, str]]:
    application: CertificateApplication = scenario.certificates.app.state.certificate_app  # type: ignore[attr-defined]
    return [
        (event.actor_id, event.actor_role)
        for event in application.repository.event_store.get(UUID(certificate_id))
        if type(event).__name__ == "CertificateDownloaded"
    ]


def test_the_file_is_served_to_its_parties_only_and_every_download_is_recorded(
    certificate_scenario: CertificateScenario,
) -> None:
    scenario = certificate_scenario
    party = scenario.provider()
    other = scenario.provider("Annan Kurs AB")
    booking_id = scenario.booking_for(party, participant_id="anna", employer_id="acme")
    certificate_id = issue(scenario, party, booking_id, file_name="Intyg Anna.pdf")["certificate_id"]
    url = f"/v1/certificates/{certificate_id}/file"
    readers = {
        ("anna", "participant"): scenario.tokens("participant", "anna"),
        ("user-of-Kurs AB", "provider"): party.provider,
        ("boss", "employer"): scenario.tokens("employer", "boss", employer_id="acme"),
        ("staff-1", "staff"): scenario.staff,
    }

    for headers in readers.values():
        download = scenario.certificates.get(url, headers=headers)
        assert download.status_code == 200, download.text
        assert download.content == FIRST_PDF
        assert download.headers["content-type"] == "application/pdf"
        assert download.headers["cache-control"] == "private, no-store"
        assert download.headers["content-disposition"].startswith('attachment; filename="Intyg Anna.pdf"')

    strangers = [
        scenario.tokens("participant", "bertil"),
        other.provider,
        scenario.tokens("employer", "other-boss", employer_id="other-company"),
    ]
    for headers in strangers:
        for path in (url, f"/v1/certificates/{certificate_id}", f"/v1/bookings/{booking_id}/certificate"):
            answer = scenario.certificates.get(path, headers=headers)
            assert (answer.status_code, answer.json()["error"]["code"]) == (404, "not_found"), path
    anonymous = scenario.certificates.get(url)
    assert (anonymous.status_code, anonymous.json()["error"]["code"]) == (401, "token_missing")

    assert downloads_of(scenario, certificate_id) == list(readers)


def test_a_new_upload_supersedes_the_active_certificate(certificate_scenario: CertificateScenario) -> None:
    scenario = certificate_scenario
    party = scenario.provider()
    booking_id = scenario.booking_for(party)
    first = issue(scenario, party, booking_id, FIRST_PDF)
    second = issue(scenario, party, booking_id, SECOND_PDF)

    old = scenario.certificate(first["certificate_id"]).json()
    assert (old["state"], old["superseded_by"]) == ("superseded", second["certificate_id"])
    active = scenario.certificates.get(f"/v1/bookings/{booking_id}/certificate", headers=party.provider).json()
    assert (active["certificate_id"], active["state"], active["page_count"]) == (second["certificate_id"], "valid", 1)
    # A superseded certificate's file stays available to its parties.
    old_file = scenario.certificates.get(f"/v1/certificates/{first['certificate_id']}/file", headers=party.provider)
    assert old_file.content == FIRST_PDF
    never_handed_out = scenario.certificate(first["certificate_id"], scenario.booking_event_position() + 1)
    assert (never_handed_out.status_code, never_handed_out.json()["error"]["code"]) == (422, "invalid_min_position")


def test_revocation_needs_a_reason_and_the_products_provider(certificate_scenario: CertificateScenario) -> None:
    scenario = certificate_scenario
    party = scenario.provider()
    other = scenario.provider("Annan Kurs AB")
    booking_id = scenario.booking_for(party)
    certificate_id = issue(scenario, party, booking_id)["certificate_id"]
    url = f"/v1/certificates/{certificate_id}/revoke"
    before = scenario.booking_event_position()

    for body in ({}, {"reason": ""}, {"reason": "   "}, {"reason": "x", "extra": 1}):
        answer = scenario.certificates.post(url, json=body, headers=party.provider)
        assert (answer.status_code, answer.json()["error"]["code"]) == (422, "validation_error"), body
    refusals = [
        (other.provider, 404, "not_found"),
        (scenario.tokens("participant", "anna"), 403, "forbidden"),
        (scenario.tokens("employer", "boss", employer_id="acme"), 403, "forbidden"),
    ]
    for headers, status, code in refusals:
        answer = scenario.certificates.post(url, json={"reason": "wrong person"}, headers=headers)
        assert (answer.status_code, answer.json()["error"]["code"]) == (status, code)
    assert scenario.booking_event_position() == before

    revoked = scenario.certificates.post(
        url, json={"reason": "Issued to the wrong participant"}, headers=party.provider
    )
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["state"] == "revoked"
    registered = scenario.certificate(certificate_id, revoked.headers["x-event-position"]).json()
    assert (registered["state"], registered["revocation_reason"]) == ("revoked", "Issued to the wrong participant")
    assert registered["revoked_at"] is not None
    active = scenario.certificates.get(f"/v1/bookings/{booking_id}/certificate", headers=party.provider)
    assert active.status_code == 404
    again = scenario.certificates.post(url, json={"reason": "twice"}, headers=scenario.staff)
    assert (again.status_code, again.json()["error"]["code"]) == (409, "certificate_not_valid")


def test_leaving_completed_or_withdrawing_consent_revokes_automatically(
    certificate_scenario: CertificateScenario,
) -> None:
    scenario = certificate_scenario
    party = scenario.provider()
    failed_booking = scenario.booking_for(party, participant_id="anna")
    consent_booking = scenario.booking_for(party, participant_id="bertil")
    scenario.consent(consent_booking, "bertil")
    failed_certificate = issue(scenario, party, failed_booking)["certificate_id"]
    with_results = issue(scenario, party, consent_booking, contains_results=True)["certificate_id"]

    changed = scenario.set_status(party, failed_booking, "failed")
    withdrawn = scenario.consent(consent_booking, "bertil", given=False)

    revoked = scenario.certificate(failed_certificate, changed.headers["x-event-position"]).json()
    assert revoked["state"] == "revoked"
    assert "completed" in revoked["revocation_reason"] and "failed" in revoked["revocation_reason"]
    revoked = scenario.certificate(with_results, withdrawn.headers["x-event-position"]).json()
    assert (revoked["state"], revoked["contains_results"]) == ("revoked", True)
    assert "consent" in revoked["revocation_reason"]


def test_only_the_participant_chooses_whether_their_name_is_public(certificate_scenario: CertificateScenario) -> None:
    scenario = certificate_scenario
    party = scenario.provider()
    booking_id = scenario.booking_for(party, participant_id="anna")
    certificate_id = issue(scenario, party, booking_id)["certificate_id"]
    url = f"/v1/certificates/{certificate_id}/visibility"
    assert scenario.certificate(certificate_id).json()["holder_public"] is False

    refusals = [
        (party.provider, 403, "forbidden"),
        (scenario.tokens("employer", "boss", employer_id="acme"), 403, "forbidden"),
        (scenario.tokens("participant", "bertil"), 404, "not_found"),
    ]
    for headers, status, code in refusals:
        answer = scenario.certificates.put(url, json={"public": True}, headers=headers)
        assert (answer.status_code, answer.json()["error"]["code"]) == (status, code)
    not_a_bool = scenario.certificates.put(url, json={"public": "yes"}, headers=scenario.tokens("participant", "anna"))
    assert not_a_bool.status_code == 422

    made_public = scenario.certificates.put(url, json={"public": True}, headers=scenario.tokens("participant", "anna"))
    assert made_public.status_code == 200, made_public.text
    assert scenario.certificate(certificate_id, made_public.headers["x-event-position"]).json()["holder_public"] is True
    # The choice belongs to the booking: a certificate that supersedes this one keeps it.
    replacement = issue(scenario, party, booking_id, SECOND_PDF)
    assert scenario.certificate(replacement["certificate_id"]).json()["holder_public"] is True
