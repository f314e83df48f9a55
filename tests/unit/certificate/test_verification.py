"""The public verification answer built from registry rows: states, privacy, initials, LinkedIn link."""

import dataclasses
from datetime import UTC, datetime

import pytest

from services.certificate.projections import RegisteredCertificate
from services.certificate.verification import (
    MAX_ECHOED_ID_LENGTH,
    canonical_certificate_id,
    initials,
    linkedin_add_url,
    verification_answer,
)
from services.certificate.verify_page import render_verify_page

CHECKED_AT = datetime(2025, 1, 2, 3, 4, 5, 678, tzinfo=UTC)
CERTIFICATE = RegisteredCertificate(
    certificate_id="7e0c3c55-2f43-4f6e-9a4c-0d1f0e5b9a11",
    booking_id="b-1",
    product_id="p-1",
    provider_id="pr-1",
    participant_id="anna",
    participant_name="Anna-Karin Svensson",
    employer_id="acme",
    sha256="ab" * 32,
    size=1234,
    page_count=2,
    file_name="Intyg Anna-Karin.pdf",
    contains_results=True,
    certification_name="Brandskydd Grund",
    state="valid",
    issued_at=datetime(2024, 12, 31, 23, 30, tzinfo=UTC),
    revoked_at=None,
    revocation_reason=None,
    superseded_by=None,
    holder_public=False,
    provider_name="Åkes Utbildning AB",
    provider_logo_url="https://cdn.example.se/akes.png",
    provider_linkedin_organization_id="1337",
    product_title="Brandskydd för alla",
)
PRIVATE_VALUES = ["b-1", "p-1", "anna", "Svensson", "acme", "ab" * 32, "1234", "Intyg", "Brandskydd för alla"]


def answer_for(certificate: RegisteredCertificate | None, **options: object) -> dict:
    return verification_answer(certificate, asked_id="asked", checked_at=CHECKED_AT, **options)  # type: ignore[arg-type]


def test_valid_answer_has_the_public_facts_only() -> None:
    assert answer_for(CERTIFICATE) == {
        "certificate_id": CERTIFICATE.certificate_id,
        "state": "valid",
        "revoked_at": None,
        "certification": {"name": "Brandskydd Grund"},
        "provider": {
            "name": "Åkes Utbildning AB",
            "logo_url": "https://cdn.example.se/akes.png",
            "linkedin_url": "https://www.linkedin.com/company/1337/",
        },
        "issued_at": "2024-12-31T23:30:00+00:00",
        "holder": {"name": None, "initials": "A.-K. S."},
        "file_matches": None,
        "file_sha256": None,
        "checked_at": "2025-01-02T03:04:05+00:00",
    }
    text = repr(answer_for(CERTIFICATE)).lower()
    assert not [value for value in PRIVATE_VALUES if value.lower() in text]


def test_the_full_name_only_when_the_holder_made_it_public() -> None:
    public = dataclasses.replace(CERTIFICATE, holder_public=True)
    assert answer_for(public)["holder"] == {"name": "Anna-Karin Svensson", "initials": "A.-K. S."}


def test_revoked_answer_has_the_date_but_never_the_reason() -> None:
    revoked = dataclasses.replace(
        CERTIFICATE,
        state="revoked",
        revoked_at=datetime(2025, 2, 3, 10, 0, tzinfo=UTC),
        revocation_reason="participation status changed from completed to failed",
    )
    answer = answer_for(revoked)
    assert (answer["state"], answer["revoked_at"]) == ("revoked", "2025-02-03T10:00:00+00:00")
    assert "failed" not in repr(answer) and "revocation_reason" not in answer


def test_not_found_echoes_the_asked_id_bounded() -> None:
    answer = verification_answer(None, asked_id="x" * 500, checked_at=CHECKED_AT)
    assert answer["certificate_id"] == "x" * MAX_ECHOED_ID_LENGTH
    assert answer["state"] == "not_found"
    assert {k for k, v in answer.items() if v is not None} == {"certificate_id", "state", "checked_at"}


def test_a_checked_file_matches_or_not() -> None:
    matched = answer_for(CERTIFICATE, file_sha256="cd" * 32)
    assert (matched["file_matches"], matched["file_sha256"], matched["state"]) == (True, "cd" * 32, "valid")
    unmatched = verification_answer(None, asked_id=None, checked_at=CHECKED_AT, file_sha256="cd" * 32)
    assert (unmatched["file_matches"], unmatched["certificate_id"], unmatched["state"]) == (False, None, "not_found")


def test_a_provider_without_linkedin_page_or_logo() -> None:
    plain = dataclasses.replace(CERTIFICATE, provider_linkedin_organization_id=None, provider_logo_url=None)
    assert answer_for(plain)["provider"] == {"name": "Åkes Utbildning AB", "logo_url": None, "linkedin_url": None}


def test_an_unknown_registry_state_is_a_bug_not_an_answer() -> None:
    with pytest.raises(ValueError, match="unknown certificate state"):
        answer_for(dataclasses.replace(CERTIFICATE, state="pending"))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Anna Svensson", "A. S."),
        ("anna  svensson", "A. S."),
        ("Anna-Karin van Dijk", "A.-K. V. D."),
        ("Åsa Öberg", "Å. Ö."),
        ("Madonna", "M."),
        ("-Anna", "A."),
        ("", ""),
    ],
)
def test_initials(name: str, expected: str) -> None:
    assert initials(name) == expected


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("7e0c3c55-2f43-4f6e-9a4c-0d1f0e5b9a11", "7e0c3c55-2f43-4f6e-9a4c-0d1f0e5b9a11"),
        ("7E0C3C55-2F43-4F6E-9A4C-0D1F0E5B9A11", "7e0c3c55-2f43-4f6e-9a4c-0d1f0e5b9a11"),
        ("{7e0c3c55-2f43-4f6e-9a4c-0d1f0e5b9a11}", "7e0c3c55-2f43-4f6e-9a4c-0d1f0e5b9a11"),
        ("7e0c3c552f434f6e9a4c0d1f0e5b9a11", "7e0c3c55-2f43-4f6e-9a4c-0d1f0e5b9a11"),
        ("not-a-uuid", None),
        ("", None),
        ("../../etc/passwd", None),
    ],
)
def test_canonical_certificate_id(raw: str, canonical: str | None) -> None:
    assert canonical_certificate_id(raw) == canonical


def test_linkedin_link_for_valid_certificates_only() -> None:
    assert linkedin_add_url(CERTIFICATE, "https://cert.example.se/") == (
        "https://www.linkedin.com/profile/add?startTask=CERTIFICATION_NAME&name=Brandskydd%20Grund"
        "&organizationId=1337&issueYear=2024&issueMonth=12"
        "&certUrl=https%3A%2F%2Fcert.example.se%2Fverify%2F7e0c3c55-2f43-4f6e-9a4c-0d1f0e5b9a11"
        "&certId=7e0c3c55-2f43-4f6e-9a4c-0d1f0e5b9a11"
    )
    unlinked = dataclasses.replace(CERTIFICATE, provider_linkedin_organization_id=None)
    assert "&organizationName=%C3%85kes%20Utbildning%20AB&" in linkedin_add_url(unlinked, "https://cert.example.se")  # type: ignore[operator]
    for state in ("revoked", "superseded"):
        assert linkedin_add_url(dataclasses.replace(CERTIFICATE, state=state), "https://cert.example.se") is None


@pytest.mark.parametrize("state", ["valid", "revoked", "superseded", None])
def test_every_answer_renders_as_the_page(state: str | None) -> None:
    certificate = None if state is None else dataclasses.replace(CERTIFICATE, state=state, revoked_at=CHECKED_AT)
    page = render_verify_page({**answer_for(certificate), "revocation_reason": None}, locale="sv")
    assert '<html lang="sv">' in page
    assert ("A.-K. S." in page) is (state is not None)
