"""Certificate upload over real HTTP: the certificate service checks with the booking service,
inspects the PDF, stores it content-addressed and has the booking service record it.

Every refusal must leave no stored object and no new booking event.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path

from pypdf import PdfWriter
from pypdf.generic import DictionaryObject, NameObject, TextStringObject

from services.certificate.storage import certificate_object_key
from tests.fixtures.services import CertificateScenario

CORPUS = Path(__file__).resolve().parents[3] / ".." / "shared" / "pdf-corpus"
CORPUS_ENTRIES = [e for e in json.loads((CORPUS / "files.json").read_text())["data"] if (CORPUS / e["path"]).is_file()]
REFUSED_CORPUS_FILES = {
    "005-libreoffice-writer-password/libreoffice-writer-password.pdf": "pdf_encrypted",
    "025-attachment/with-attachment.pdf": "pdf_embedded_files",
}
GOOD_PDF = (CORPUS / "001-trivial" / "minimal-document.pdf").read_bytes()
MAX_UPLOAD_BYTES = 20_000_000


def written_pdf(change: Callable[[PdfWriter], None] = lambda writer: None, pages: int = 1) -> bytes:
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(595, 842)
    change(writer)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def open_action_script(writer: PdfWriter) -> None:
    writer.root_object[NameObject("/OpenAction")] = DictionaryObject(
        {NameObject("/S"): NameObject("/JavaScript"), NameObject("/JS"): TextStringObject("app.alert('hi')")}
    )


def oversized(size: int) -> bytes:
    return GOOD_PDF + b"\n%" + b"0" * (size - len(GOOD_PDF) - 2)


class NothingChanges:
    """Asserts that a refused upload stored no object and recorded no booking event."""

    def __init__(self, scenario: CertificateScenario) -> None:
        self.scenario = scenario
        self.keys = scenario.stored_keys()
        self.position = scenario.booking_event_position()

    def check(self, what: str) -> None:
        assert self.scenario.stored_keys() == self.keys, f"{what}: an object was stored"
        assert self.scenario.booking_event_position() == self.position, f"{what}: a booking event was recorded"


def assert_refused(answer, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), answer.text


def test_every_corpus_pdf_is_issued_or_refused_for_its_reason(certificate_scenario: CertificateScenario) -> None:
    scenario = certificate_scenario
    party = scenario.provider()
    booking_id = scenario.booking_for(party)
    issued = None
    for entry in CORPUS_ENTRIES:
        content = (CORPUS / entry["path"]).read_bytes()
        unchanged = NothingChanges(scenario)
        answer = scenario.upload(booking_id, party.provider, content, file_name=Path(entry["path"]).name)
        if entry["path"] in REFUSED_CORPUS_FILES:
            assert_refused(answer, 422, REFUSED_CORPUS_FILES[entry["path"]])
            unchanged.check(entry["path"])
            continue
        assert answer.status_code == 201, f"{entry['path']}: {answer.text}"
        issued = answer.json()
        sha256 = hashlib.sha256(content).hexdigest()
        assert (issued["page_count"], issued["size"], issued["sha256"]) == (entry["pages"], len(content), sha256)
        assert (issued["state"], issued["booking_id"], issued["file_name"]) == (
            "valid",
            booking_id,
            Path(entry["path"]).name,
        )
        assert certificate_object_key(sha256) in scenario.stored_keys()
    assert issued is not None
    active = scenario.certificates.get(
        f"/v1/bookings/{booking_id}/certificate",
        headers={**party.provider, "X-Min-Position": answer.headers.get("x-event-position", "0")},
    )
    assert active.status_code == 200, active.text
    assert active.json()["certificate_id"] == issued["certificate_id"]
    uploads = scenario.booking_event_types().count("CertificateUploaded")
    assert uploads == len(CORPUS_ENTRIES) - len(REFUSED_CORPUS_FILES)


BAD_FILES = [
    ("truncated.pdf", GOOD_PDF[: len(GOOD_PDF) // 2], 422, "pdf_unreadable"),
    ("no-pages.pdf", written_pdf(pages=0), 422, "pdf_no_pages"),
    ("picture.pdf", b"\x89PNG\r\n\x1a\n not a pdf at all", 415, "not_a_pdf"),
    ("empty.pdf", b"", 415, "not_a_pdf"),
    ("script.pdf", written_pdf(open_action_script), 422, "pdf_javascript"),
    ("one-byte-too-many.pdf", oversized(MAX_UPLOAD_BYTES + 1), 413, "file_too_large"),
    ("21-mb.pdf", oversized(21_000_000), 413, "payload_too_large"),
]


def test_bad_files_are_refused_and_nothing_is_stored(certificate_scenario: CertificateScenario) -> None:
    scenario = certificate_scenario
    party = scenario.provider()
    booking_id = scenario.booking_for(party)
    for name, content, status, code in BAD_FILES:
        unchanged = NothingChanges(scenario)
        assert_refused(scenario.upload(booking_id, party.provider, content, file_name=name), status, code)
        unchanged.check(name)
    assert list(scenario.settings.upload_spool_dir.iterdir()) == []


def test_file_names_are_sanitised_and_never_used_as_keys(certificate_scenario: CertificateScenario) -> None:
    scenario = certificate_scenario
    party = scenario.provider()
    names = {
        "../../etc/passwd": "passwd.pdf",
        "..\\..\\Windows\\system32\\intyg.pdf": "intyg.pdf",
        "/var/lib/certificates/intyg.PDF": "intyg.pdf",
        "x" * 400 + ".pdf": "x" * 116 + ".pdf",
        "..": "certificate.pdf",
    }
    for raw, expected in names.items():
        booking_id = scenario.booking_for(party)
        answer = scenario.upload(booking_id, party.provider, GOOD_PDF, file_name=raw)
        assert answer.status_code == 201, answer.text
        assert answer.json()["file_name"] == expected, raw
    # Control and direction characters, which an HTML form encoder would escape, sent raw.
    booking_id = scenario.booking_for(party)
    answer = scenario.certificates.post(
        f"/v1/bookings/{booking_id}/certificate",
        content=multipart_body("bnd", ("intyg\x07\u202egpj.pdf", GOOD_PDF)),
        headers=multipart_headers(party.provider, "bnd"),
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["file_name"] == "intyggpj.pdf"
    download = scenario.certificates.get(
        f"/v1/certificates/{answer.json()['certificate_id']}/file",
        headers={**party.provider, "X-Min-Position": answer.headers["x-event-position"]},
    )
    assert (
        download.headers["content-disposition"]
        == "attachment; filename=\"intyggpj.pdf\"; filename*=UTF-8''intyggpj.pdf"
    )
    assert scenario.stored_keys() == {certificate_object_key(hashlib.sha256(GOOD_PDF).hexdigest())}


def multipart_body(boundary: str, file: tuple[str, bytes] | None, fields: dict[str, str] | None = None) -> bytes:
    """A multipart/form-data body written by hand: no client escapes the file name."""
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in (fields or {}).items()
    ]
    if file is not None:
        file_name, content = file
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file_name}"\r\n'
            "Content-Type: application/pdf\r\n\r\n".encode()
            + content
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def multipart_headers(headers: dict[str, str], boundary: str) -> dict[str, str]:
    return {**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_a_malformed_form_is_refused(certificate_scenario: CertificateScenario) -> None:
    scenario = certificate_scenario
    party = scenario.provider()
    booking_id = scenario.booking_for(party)
    unchanged = NothingChanges(scenario)
    url = f"/v1/bookings/{booking_id}/certificate"
    headers = party.provider

    no_file = scenario.certificates.post(
        url,
        content=multipart_body("bnd", None, {"contains_results": "false"}),
        headers=multipart_headers(headers, "bnd"),
    )
    assert_refused(no_file, 422, "file_missing")
    misnamed = scenario.certificates.post(url, files={"document": ("a.pdf", GOOD_PDF)}, headers=headers)
    assert_refused(misnamed, 422, "unexpected_file")
    not_multipart = scenario.certificates.post(url, json={"file": "JVBERi0="}, headers=headers)
    assert_refused(not_multipart, 415, "multipart_required")
    bad_flag = scenario.upload(booking_id, headers, GOOD_PDF, contains_results="maybe")
    assert_refused(bad_flag, 422, "validation_error")
    cut_short = scenario.certificates.post(
        url,
        content=multipart_body("bnd", ("intyg.pdf", GOOD_PDF))[:-20],
        headers=multipart_headers(headers, "bnd"),
    )
    assert_refused(cut_short, 422, "invalid_multipart")
    unchanged.check("malformed forms")


def test_the_booking_rules_apply_before_anything_is_stored(certificate_scenario: CertificateScenario) -> None:
    scenario = certificate_scenario
    party = scenario.provider()
    other = scenario.provider("Annan Kurs AB")
    uncertified = scenario.provider("Utan Intyg AB", certification=None)
    completed = scenario.booking_for(party)
    enrolled = scenario.booking_for(party, status=None)
    without_certification = scenario.booking_for(uncertified)
    unchanged = NothingChanges(scenario)

    cases = [
        (enrolled, party.provider, {}, 409, "booking_not_completed"),
        (without_certification, uncertified.provider, {}, 409, "certification_missing"),
        (completed, party.provider, {"contains_results": True}, 409, "results_consent_missing"),
        (completed, other.provider, {}, 404, "not_found"),
        (completed, scenario.tokens("participant", "anna"), {}, 403, "forbidden"),
        (completed, {}, {}, 401, "token_missing"),
    ]
    for booking_id, headers, options, status, code in cases:
        assert_refused(scenario.upload(booking_id, headers, GOOD_PDF, **options), status, code)
        unchanged.check(code)

    scenario.consent(completed)
    with_results = scenario.upload(completed, party.provider, GOOD_PDF, contains_results=True)
    assert with_results.status_code == 201, with_results.text
    assert with_results.json()["contains_results"] is True


def test_a_file_already_issued_meets_the_same_booking_rules(certificate_scenario: CertificateScenario) -> None:
    """Bytes a certificate references are not stored again, so only the record asks the booking
    service: it refuses what the check would, also an upload to another provider's booking."""
    scenario = certificate_scenario
    party = scenario.provider()
    other = scenario.provider("Annan Kurs AB")
    first = scenario.upload(scenario.booking_for(party), party.provider, GOOD_PDF)
    assert first.status_code == 201, first.text
    assert scenario.certificate(first.json()["certificate_id"], first.headers["x-event-position"]).status_code == 200
    completed = scenario.booking_for(party)
    enrolled = scenario.booking_for(party, status=None)
    unchanged = NothingChanges(scenario)

    cases = [
        (enrolled, party.provider, {}, 409, "booking_not_completed"),
        (completed, party.provider, {"contains_results": True}, 409, "results_consent_missing"),
        (completed, other.provider, {}, 404, "not_found"),
    ]
    for booking_id, headers, options, status, code in cases:
        assert_refused(scenario.upload(booking_id, headers, GOOD_PDF, **options), status, code)
        unchanged.check(code)

    again = scenario.upload(completed, party.provider, GOOD_PDF)
    assert again.status_code == 201, again.text
    assert again.json()["sha256"] == first.json()["sha256"]
    assert scenario.stored_keys() == unchanged.keys


def test_the_booking_service_refusal_comes_before_the_file_refusal(certificate_scenario: CertificateScenario) -> None:
    """The booking service is asked while the file arrives and is checked: its refusal still wins."""
    scenario = certificate_scenario
    party = scenario.provider()
    other = scenario.provider("Annan Kurs AB")
    enrolled = scenario.booking_for(party, status=None)
    completed = scenario.booking_for(party)
    unchanged = NothingChanges(scenario)

    cases = [
        (enrolled, party.provider, b"not a pdf", {}, 409, "booking_not_completed"),
        (enrolled, party.provider, written_pdf(open_action_script), {}, 409, "booking_not_completed"),
        (enrolled, party.provider, GOOD_PDF, {"contains_results": "maybe"}, 409, "booking_not_completed"),
        (completed, other.provider, b"not a pdf", {}, 404, "not_found"),
    ]
    for booking_id, headers, content, options, status, code in cases:
        assert_refused(scenario.upload(booking_id, headers, content, **options), status, code)
        unchanged.check(code)


def test_a_retried_upload_with_the_same_idempotency_key_issues_once(certificate_scenario: CertificateScenario) -> None:
    scenario = certificate_scenario
    party = scenario.provider()
    booking_id = scenario.booking_for(party)
    # A retry sends the same bytes: the same multipart boundary.
    request = {
        "content": multipart_body("retry-boundary", ("intyg.pdf", GOOD_PDF), {"contains_results": "false"}),
        "headers": {**multipart_headers(party.provider, "retry-boundary"), "Idempotency-Key": "upload-1"},
    }

    first = scenario.certificates.post(f"/v1/bookings/{booking_id}/certificate", **request)
    again = scenario.certificates.post(f"/v1/bookings/{booking_id}/certificate", **request)

    assert first.status_code == again.status_code == 201, first.text
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert scenario.booking_event_types().count("CertificateUploaded") == 1
    assert scenario.stored_keys() == {certificate_object_key(first.json()["sha256"])}
