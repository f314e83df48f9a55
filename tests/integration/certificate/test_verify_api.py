"""Public verification over HTTP, no token: answers by id and by file, what they reveal, their
signatures (checked with joserfc; the service signs with PyJWT), caching and the rate limit.

Certificates are issued through the booking service (served over HTTP) and the certificate app.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from datetime import datetime
from ipaddress import IPv4Network
from typing import Any
from uuid import uuid4

import pytest
from fastapi.testclient import TestClient
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from pydantic import SecretStr

from services.certificate.main import create_app as create_certificate_app
from services.certificate.settings import CertificateSettings
from services.certificate.signed_answers import RECHECK_S
from services.certificate.signing import generate_signing_key
from tests.fixtures.services import CertificateScenario
from tests.fixtures.verification import CORPUS, ISSUED_PDF, JSON_ACCEPT, OTHER_PDF, THIRD_PDF, VerificationFlows

# joserfc flags "EdDSA" as superseded by RFC 9864's "Ed25519"; the design fixes EdDSA.
pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")

UPLOAD_LIMIT = 100_000
ANSWER_FIELDS = {
    "certificate_id",
    "state",
    "revoked_at",
    "certification",
    "provider",
    "issued_at",
    "holder",
    "file_matches",
    "file_sha256",
    "checked_at",
    "signature",
}
CSP = (
    "default-src 'none'; img-src https: http: data:; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# A loaded test machine: requests and the registry read take a while.
SLACK_S = 1.5
KEY_A = generate_signing_key("key-a")
KEY_B = generate_signing_key("key-b")


@pytest.fixture
def settings_update(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Extra certificate settings for one test (indirect parametrisation)."""
    return getattr(request, "param", {})


@pytest.fixture
def certificate_settings(
    certificate_settings: CertificateSettings, settings_update: dict[str, Any]
) -> CertificateSettings:
    """A small upload limit (413 without megabytes) and a rate limit no test reaches by accident."""
    update = {"max_upload_bytes": UPLOAD_LIMIT, "verify_rate_per_minute": 600, "verify_rate_burst": 200}
    return certificate_settings.model_copy(update={**update, **settings_update})


def canonical(answer: dict[str, Any]) -> bytes:
    """The documented signing input, written independently of the service's code."""
    unsigned = {name: value for name, value in answer.items() if name != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signature_holds(answer: dict[str, Any], jwks: dict[str, Any]) -> bool:
    try:
        jws.deserialize_compact(
            answer["signature"]["jws"], KeySet.import_key_set(jwks), algorithms=["EdDSA"], payload=canonical(answer)
        )
    except JoseError:  # a bad signature, or no key with its kid
        return False
    return True


def unsigned_text(answer: dict[str, Any]) -> str:
    """The answer's facts as text (the signature is random-looking and could contain any word)."""
    return json.dumps({name: value for name, value in answer.items() if name != "signature"}, ensure_ascii=False)


def assert_revealed_nothing_private(text: str, *secrets: str) -> None:
    for secret in ("anna@example.se", "example.se", "contains_results", "intyg", "file_name", *secrets):
        assert secret.lower() not in text.lower(), secret


def test_answers_by_state_reveal_only_public_facts(
    certificate_scenario: CertificateScenario, verification: VerificationFlows
) -> None:
    scenario = certificate_scenario
    party = scenario.provider("Kurs AB", certification="Certifierad projektledare")
    booking_id = scenario.booking_for(party, participant_id="anna")
    scenario.consent(booking_id)
    first = verification.issue(party, booking_id, ISSUED_PDF, contains_results=True)
    review = scenario.booking.post(
        f"/v1/bookings/{booking_id}/review",
        json={"rating": 2, "text": "REVIEW-TEXT-42"},
        headers=scenario.tokens("participant", "anna"),
    )
    assert review.status_code == 200, review.text
    sha256 = hashlib.sha256(ISSUED_PDF).hexdigest()

    valid = verification.by_id(first.certificate_id)
    assert valid.status_code == 200, valid.text
    answer = valid.json()
    assert set(answer) == ANSWER_FIELDS
    assert answer["state"] == "valid" and answer["certificate_id"] == first.certificate_id
    assert answer["certification"] == {"name": "Certifierad projektledare"}
    assert answer["provider"] == {
        "name": "Kurs AB",
        "logo_url": None,
        "linkedin_url": "https://www.linkedin.com/company/1337/",
    }
    assert answer["holder"] == {"name": None, "initials": "A. S."}
    assert (answer["revoked_at"], answer["file_matches"], answer["file_sha256"]) == (None, None, None)
    issued_at = datetime.fromisoformat(answer["issued_at"])
    assert (valid.headers["cache-control"], valid.headers["vary"]) == ("public, max-age=60", "Accept, Accept-Language")
    assert valid.headers["content-type"] == "application/json"
    assert_revealed_nothing_private(
        unsigned_text(answer), "anna", "svensson", "REVIEW-TEXT-42", sha256, booking_id, '"rating"'
    )

    page = verification.by_id(
        first.certificate_id, {"Accept": "text/html", "Accept-Language": "sv-SE,sv;q=0.9,en;q=0.5"}
    )
    assert (page.status_code, page.headers["content-type"]) == (200, "text/html; charset=utf-8")
    assert (page.headers["content-language"], page.headers["content-security-policy"]) == ("sv", CSP)
    assert (page.headers["cache-control"], page.headers["vary"]) == ("public, max-age=60", "Accept, Accept-Language")
    assert "Giltigt certifikat" in page.text and "A. S." in page.text and "Kurs AB" in page.text
    assert_revealed_nothing_private(page.text, "anna", "svensson", "REVIEW-TEXT-42", sha256)
    browser = verification.by_id(first.certificate_id, {"Accept": "text/html,*/*;q=0.8", "Accept-Language": "de"})
    assert browser.headers["content-language"] == "en" and "Valid certificate" in browser.text

    metadata = scenario.certificates.get(
        f"/v1/bookings/{booking_id}/certificate",
        headers={**scenario.tokens("participant", "anna"), **verification.caught_up()},
    )
    assert metadata.status_code == 200, metadata.text
    assert metadata.json()["linkedin_add_url"] == (
        "https://www.linkedin.com/profile/add?startTask=CERTIFICATION_NAME&name=Certifierad%20projektledare"
        f"&organizationId=1337&issueYear={issued_at.year}&issueMonth={issued_at.month}"
        f"&certUrl=http%3A%2F%2F127.0.0.1%3A8002%2Fverify%2F{first.certificate_id}&certId={first.certificate_id}"
    )

    verification.make_public(first.certificate_id)
    assert verification.by_id(first.certificate_id).json()["holder"] == {"name": "Anna Svensson", "initials": "A. S."}

    second = verification.issue(party, booking_id, OTHER_PDF)
    superseded = verification.by_id(first.certificate_id)
    assert (superseded.status_code, superseded.json()["state"]) == (200, "superseded")
    assert superseded.headers["cache-control"] == "no-store"
    assert (
        superseded.json()["holder"]["name"] == "Anna Svensson"
    )  # the choice carries over to the booking's certificates
    old_metadata = scenario.certificates.get(f"/v1/certificates/{first.certificate_id}", headers=scenario.staff)
    assert old_metadata.json()["linkedin_add_url"] is None

    verification.revoke(party, second.certificate_id, "SECRET-REASON: participation status changed to failed")
    revoked = verification.by_id(second.certificate_id)
    assert (revoked.status_code, revoked.json()["state"]) == (200, "revoked")
    assert datetime.fromisoformat(revoked.json()["revoked_at"]) >= datetime.fromisoformat(revoked.json()["issued_at"])
    assert revoked.headers["cache-control"] == "no-store"
    assert_revealed_nothing_private(unsigned_text(revoked.json()), "SECRET-REASON", "failed")
    revoked_page = verification.by_id(second.certificate_id, {"Accept": "text/html", "Accept-Language": "en"})
    assert "Revoked on" in revoked_page.text and "SECRET-REASON" not in revoked_page.text

    unknown_id = str(uuid4())
    for asked in (unknown_id, "not-a-uuid", "..%2F..%2Fetc%2Fpasswd", "' OR 1=1 --", "ä" * 300, "a/b/c", ""):
        missing = verification.by_id(asked)
        assert missing.status_code == 404, (asked, missing.text)
        assert set(missing.json()) == ANSWER_FIELDS
        assert {k: v for k, v in missing.json().items() if k not in ("certificate_id", "checked_at", "signature")} == {
            "state": "not_found",
            "revoked_at": None,
            "certification": None,
            "provider": None,
            "issued_at": None,
            "holder": None,
            "file_matches": None,
            "file_sha256": None,
        }
        assert missing.headers["cache-control"] == "no-store"
    assert verification.by_id(unknown_id).json()["certificate_id"] == unknown_id
    missing_page = verification.by_id(unknown_id, {"Accept": "text/html", "Accept-Language": "sv"})
    assert (missing_page.status_code, missing_page.headers["content-type"]) == (404, "text/html; charset=utf-8")
    assert "Hittades inte" in missing_page.text
    # Any usual spelling of an id finds the certificate.
    assert verification.by_id(first.certificate_id.upper()).json()["certificate_id"] == first.certificate_id


@pytest.mark.parametrize(
    "settings_update", [{"verify_signing_keys": SecretStr(json.dumps({"keys": [KEY_A]}))}], indirect=True
)
def test_answers_are_signed_and_still_verify_after_a_key_rotation(
    certificate_scenario: CertificateScenario,
    verification: VerificationFlows,
    certificate_settings: CertificateSettings,
) -> None:
    """A rotation starts the service with the new key set: the answers the old one kept are not served."""
    scenario = certificate_scenario
    party = scenario.provider()
    issued = verification.issue(party, scenario.booking_for(party))
    jwks = scenario.certificates.get("/.well-known/jwks.json")
    assert (jwks.status_code, jwks.headers["cache-control"]) == (200, "public, max-age=300")
    published = jwks.json()
    assert [key["kid"] for key in published["keys"]] == ["key-a"]
    assert all("d" not in key for key in published["keys"]), "a private key was published"

    answers = [verification.by_id(issued.certificate_id).json(), verification.by_id(str(uuid4())).json()]
    for answer in answers:
        assert answer["signature"]["kid"] == "key-a"
        assert answer["signature"]["jwks_url"] == "http://127.0.0.1:8002/.well-known/jwks.json"
        assert signature_holds(answer, published), answer
    valid = answers[0]
    for tampered in (
        {**valid, "state": "revoked"},
        {**valid, "holder": {"name": "Mallory", "initials": "M."}},
        {**valid, "checked_at": "2099-01-01T00:00:00+00:00"},
        {**valid, "extra": True},
    ):
        assert not signature_holds(tampered, published)

    rotated_keys = SecretStr(json.dumps({"keys": [KEY_B, KEY_A]}))
    rotated = create_certificate_app(
        certificate_settings.model_copy(update={"verify_signing_keys": rotated_keys, "run_workers": False})
    )
    with TestClient(rotated, raise_server_exceptions=False) as client:
        republished = client.get("/.well-known/jwks.json").json()
        fresh = client.get(
            f"/verify/{issued.certificate_id}", headers={"Accept": "application/json", **verification.caught_up()}
        ).json()
    assert [key["kid"] for key in republished["keys"]] == ["key-b", "key-a"]
    assert signature_holds(valid, republished), "an answer signed before the rotation no longer verifies"
    assert fresh["signature"]["kid"] == "key-b" and signature_holds(fresh, republished)
    assert not signature_holds(fresh, published), "the new answer was not signed with the new key"


def test_kept_answers_are_revalidated_with_etags(
    certificate_scenario: CertificateScenario, verification: VerificationFlows
) -> None:
    scenario = certificate_scenario
    party = scenario.provider()
    issued = verification.issue(party, scenario.booking_for(party))
    published = scenario.certificates.get("/.well-known/jwks.json").json()

    first = verification.by_id(issued.certificate_id)
    time.sleep(1.1)  # a fresh answer would now have another checked_at
    again = scenario.certificates.get(f"/verify/{issued.certificate_id}", headers=JSON_ACCEPT)  # no X-Min-Position
    assert (again.status_code, again.content) == (200, first.content), "not the kept answer, byte for byte"
    assert again.headers["etag"] == first.headers["etag"] and signature_holds(again.json(), published)
    etag = first.headers["etag"]
    for if_none_match in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        unchanged = verification.by_id(issued.certificate_id, {"If-None-Match": if_none_match})
        assert (unchanged.status_code, unchanged.content) == (304, b""), if_none_match
        assert (unchanged.headers["etag"], unchanged.headers["cache-control"], unchanged.headers["vary"]) == (
            etag,
            "public, max-age=60",
            "Accept, Accept-Language",
        )
    assert verification.by_id(issued.certificate_id, {"If-None-Match": '"other"'}).status_code == 200

    page_headers = {"Accept": "text/html", "Accept-Language": "sv"}
    page = verification.by_id(issued.certificate_id, page_headers)
    assert page.status_code == 200 and page.headers["etag"] not in (etag, None)
    assert verification.by_id(issued.certificate_id, {**page_headers, "If-None-Match": etag}).status_code == 200
    unchanged_page = verification.by_id(issued.certificate_id, {**page_headers, "If-None-Match": page.headers["etag"]})
    assert unchanged_page.status_code == 304
    assert (unchanged_page.headers["content-language"], unchanged_page.headers["content-security-policy"]) == (
        "sv",
        CSP,
    )

    missing = verification.by_id(str(uuid4()), {"If-None-Match": "*"})
    assert missing.status_code == 404 and "etag" not in missing.headers


def test_x_min_position_on_an_answer_by_id_is_checked_and_documented(certificate_client: TestClient) -> None:
    """The route reads its parameters itself (cheaper): the same 422s and OpenAPI as a declared header."""
    url = f"/verify/{uuid4()}"
    for given, code, says in (
        ("-1", "validation_error", "header.X-Min-Position: Input should be greater than or equal to 0"),
        ("1.5", "validation_error", "header.X-Min-Position: Input should be a valid integer"),
        ("soon", "validation_error", "header.X-Min-Position: Input should be a valid integer"),
        ("99999999", "invalid_min_position", "X-Min-Position 99999999 is past the last event"),
    ):
        refused = certificate_client.get(url, headers={**JSON_ACCEPT, "X-Min-Position": given})
        assert (refused.status_code, refused.json()["error"]["code"]) == (422, code), given
        assert refused.json()["error"]["message"].startswith(says), refused.text
    assert certificate_client.get(url, headers={**JSON_ACCEPT, "X-Min-Position": "0"}).status_code == 404

    operation = certificate_client.get("/openapi.json").json()["paths"]["/verify/{certificate_id}"]["get"]
    parameters = {(p["in"], p["name"]): p for p in operation["parameters"]}
    assert set(parameters) == {("path", "certificate_id"), ("header", "X-Min-Position")}
    assert parameters["path", "certificate_id"]["required"] is True
    assert parameters["header", "X-Min-Position"]["schema"] == {"type": "integer", "minimum": 0}


def test_answers_by_id_are_only_got(certificate_client: TestClient) -> None:
    """The route answers at the ASGI level, yet other methods get the usual 405 in the usual error format."""
    refused = certificate_client.post(f"/verify/{uuid4()}", headers=JSON_ACCEPT)
    assert (refused.status_code, refused.json()["error"]["code"]) == (405, "method_not_allowed")
    assert refused.headers["allow"] == "GET" and refused.headers["x-request-id"]


def test_changes_reach_kept_answers_promptly_without_read_your_writes(
    certificate_scenario: CertificateScenario, verification: VerificationFlows
) -> None:
    """Once the registry has a change, a plain GET shows it within the recheck interval (RECHECK_S)."""
    scenario = certificate_scenario
    party = scenario.provider()
    issued = verification.issue(party, scenario.booking_for(party))
    url = f"/verify/{issued.certificate_id}"

    def shown_within_recheck_interval(shows_change: Any) -> dict[str, Any]:
        # The registry has the change once the certificate's metadata (read-your-writes) answers.
        assert scenario.certificate(issued.certificate_id, scenario.booking_event_position()).status_code == 200
        started = time.monotonic()
        while not shows_change(answer := scenario.certificates.get(url, headers=JSON_ACCEPT).json()):
            assert time.monotonic() - started < RECHECK_S + SLACK_S, f"still {answer}"
            time.sleep(0.02)
        return answer

    # Once the registry has the certificate (the upload's answer does not wait for it), it is kept at its first GET.
    assert scenario.certificate(issued.certificate_id, scenario.booking_event_position()).status_code == 200
    assert scenario.certificates.get(url, headers=JSON_ACCEPT).json()["holder"]["name"] is None
    verification.make_public(issued.certificate_id)
    shown_within_recheck_interval(lambda answer: answer["holder"]["name"] == "Anna Svensson")
    verification.revoke(party, issued.certificate_id, "issued in error")
    revoked = shown_within_recheck_interval(lambda answer: answer["state"] == "revoked")
    assert revoked["revoked_at"] is not None and "issued in error" not in json.dumps(revoked)
    assert scenario.certificates.get(url, headers=JSON_ACCEPT).headers["cache-control"] == "no-store"


def one_byte_changed(content: bytes) -> bytes:
    """Still a valid PDF: the byte changed is in the binary comment on the second line."""
    assert content[9:10] == b"%"
    changed = bytearray(content)
    changed[10] ^= 0x01
    return bytes(changed)


def test_a_file_is_authentic_only_if_it_is_exactly_the_issued_one(
    certificate_scenario: CertificateScenario, verification: VerificationFlows
) -> None:
    scenario = certificate_scenario
    party = scenario.provider()
    issued = verification.issue(party, scenario.booking_for(party), ISSUED_PDF)
    published = scenario.certificates.get("/.well-known/jwks.json").json()
    stored, position = scenario.stored_keys(), scenario.booking_event_position()

    match = verification.by_file(ISSUED_PDF, file_name="renamed by the employer.pdf")
    assert match.status_code == 200, match.text
    assert match.headers["cache-control"] == "no-store"
    answer = match.json()
    assert set(answer) == ANSWER_FIELDS and signature_holds(answer, published)
    assert (answer["state"], answer["certificate_id"], answer["file_matches"]) == ("valid", issued.certificate_id, True)
    assert answer["file_sha256"] == hashlib.sha256(ISSUED_PDF).hexdigest()
    assert answer["holder"] == {"name": None, "initials": "A. S."}

    for name, content in (("never issued", THIRD_PDF), ("modified", one_byte_changed(ISSUED_PDF))):
        refused = verification.by_file(content)
        assert refused.status_code == 200, (name, refused.text)
        answer = refused.json()
        assert signature_holds(answer, published)
        assert (answer["state"], answer["file_matches"], answer["certificate_id"]) == ("not_found", False, None), name
        assert answer["file_sha256"] == hashlib.sha256(content).hexdigest()
        assert (answer["certification"], answer["provider"], answer["holder"]) == (None, None, None)

    bad_uploads = [
        (scenario.certificates.post("/verify", files={"file": ("x.pdf", b"GIF89a not a pdf")}), 415, "not_a_pdf"),
        (scenario.certificates.post("/verify", files={"file": ("x.pdf", b"")}), 415, "not_a_pdf"),
        (
            scenario.certificates.post(
                "/verify", files={"file": ("big.pdf", ISSUED_PDF + b"%" * (UPLOAD_LIMIT + 1 - len(ISSUED_PDF)))}
            ),
            413,
            "file_too_large",
        ),
        (
            scenario.certificates.post(
                "/verify",
                files={
                    "file": (
                        "enc.pdf",
                        (CORPUS / "005-libreoffice-writer-password" / "libreoffice-writer-password.pdf").read_bytes(),
                    )
                },
            ),
            422,
            "pdf_encrypted",
        ),
        (scenario.certificates.post("/verify", json={"file": "JVBERi0="}), 415, "multipart_required"),
        (scenario.certificates.post("/verify", files={"document": ("x.pdf", ISSUED_PDF)}), 422, "unexpected_file"),
        (
            scenario.certificates.post(
                "/verify", files={"file": ("x.pdf", ISSUED_PDF)}, data={"contains_results": "true"}
            ),
            422,
            "unexpected_field",
        ),
    ]
    for answer, status, code in bad_uploads:
        assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), answer.text

    verification.revoke(party, issued.certificate_id, "issued in error")
    after_revocation = verification.by_file(ISSUED_PDF).json()
    assert (after_revocation["state"], after_revocation["file_matches"]) == ("revoked", True)

    # Checking files stores nothing: no object, no upload file left behind, only the revocation recorded.
    assert scenario.stored_keys() == stored
    assert scenario.booking_event_types()[position:] == ["CertificateRevoked"]
    assert list(scenario.settings.upload_spool_dir.iterdir()) == []


LIMITED = {"verify_rate_per_minute": 1, "verify_rate_burst": 3, "trusted_proxies": (IPv4Network("10.0.0.2/32"),)}


@pytest.fixture
def client_at(certificate_client: TestClient) -> Iterator[Any]:
    """TestClients on the running certificate app, each with its own peer address."""
    clients: list[TestClient] = []

    def make(address: str) -> TestClient:
        clients.append(TestClient(certificate_client.app, client=(address, 50000), raise_server_exceptions=False))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.mark.parametrize("settings_update", [LIMITED], indirect=True)
def test_public_endpoints_are_rate_limited_per_client(client_at: Any) -> None:
    alice, bob, proxy = client_at("192.0.2.10"), client_at("192.0.2.20"), client_at("10.0.0.2")
    unknown = f"/verify/{uuid4()}"
    assert [alice.get(unknown).status_code for _ in range(3)] == [404, 404, 404]

    for refused in (
        alice.get(unknown),
        alice.get("/.well-known/jwks.json"),
        alice.post("/verify", files={"file": ("x.pdf", ISSUED_PDF)}),
        alice.get(unknown, headers={"X-Forwarded-For": "198.51.100.7"}),  # alice is no proxy: not believed
        proxy.get(unknown, headers={"X-Forwarded-For": "192.0.2.10"}),  # alice through the proxy
        proxy.get(unknown, headers={"X-Forwarded-For": "203.0.113.9, 192.0.2.10"}),  # alice, spoofing a hop
    ):
        assert (refused.status_code, refused.json()["error"]["code"]) == (429, "rate_limited"), refused.request.headers
        assert 1 <= int(refused.headers["retry-after"]) <= 60

    assert bob.get("/.well-known/jwks.json").status_code == 200
    assert proxy.get(unknown, headers={"X-Forwarded-For": "192.0.2.10, 198.51.100.50"}).status_code == 404
