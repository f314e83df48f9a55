"""Uploads when a dependency fails: the booking service, the storage, or the step between storing
the file and recording the certificate. No half state may stay visible; stray files are swept."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from eventsourcing.persistence import OperationalError as PersistenceOperationalError
from fastapi.testclient import TestClient

from services.certificate.application import CertificateApplication
from services.certificate.booking_gateway import BookingGateway
from services.certificate.main import create_app, object_storage
from services.certificate.settings import CertificateSettings
from services.certificate.storage import ObjectStorage, StoredObject, certificate_object_key
from services.certificate.sweep import run_sweep, sweep_orphans
from services.certificate.uploads import UploadIntents
from shared.views import open_store
from tests.fixtures.services import CertificateScenario, ServedApp

CORPUS = Path(__file__).resolve().parents[3] / ".." / "shared" / "pdf-corpus"
PDF = (CORPUS / "001-trivial" / "minimal-document.pdf").read_bytes()
OTHER_PDF = (CORPUS / "004-pdflatex-4-pages" / "pdflatex-4-pages.pdf").read_bytes()
RECORD_PATH_END = "/certificates"


def key_of(content: bytes) -> str:
    return certificate_object_key(hashlib.sha256(content).hexdigest())


def refused(answer: httpx.Response) -> tuple[int, str]:
    return answer.status_code, answer.json()["error"]["code"]


def active_certificate(scenario: CertificateScenario, booking_id: str) -> httpx.Response:
    """The booking's active certificate once the registry has every booking event so far."""
    position = str(scenario.booking_event_position())
    return scenario.certificates.get(
        f"/v1/bookings/{booking_id}/certificate", headers={**scenario.staff, "X-Min-Position": position}
    )


def test_booking_service_down_means_503_and_nothing_stored(
    certificate_scenario: CertificateScenario, booking_server: ServedApp
) -> None:
    scenario = certificate_scenario
    party = scenario.provider()
    booking_id = scenario.booking_for(party)
    position = scenario.booking_event_position()

    booking_server.stop()
    answer = scenario.upload(booking_id, party.provider, PDF)

    assert refused(answer) == (503, "booking_unavailable")
    assert answer.headers["retry-after"] == "1"
    assert scenario.stored_keys() == set()
    assert scenario.booking_event_position() == position
    readiness = scenario.certificates.get("/readyz")
    assert readiness.status_code == 503
    assert list(readiness.json()["failing"]) == ["booking_service"]


@dataclass
class StorageDrill:
    """A certificate client and a way to take its storage away (and bring it back)."""

    client: TestClient
    storage: ObjectStorage
    outage: Callable[[], AbstractContextManager[None]]


@contextmanager
def folder_gone(root: Path) -> Iterator[None]:
    """The storage folder is replaced by a file, like a volume that is not mounted."""
    away = root.with_name("files.away")
    root.rename(away)
    root.write_bytes(b"")
    try:
        yield
    finally:
        root.unlink()
        away.rename(root)


@pytest.fixture
def storage_drill(
    store: str,
    request: pytest.FixtureRequest,
    certificate_settings: CertificateSettings,
    certificate_client: TestClient,
) -> Iterator[StorageDrill]:
    """SQLite runs with the local folder, PostgreSQL with an S3 server of the test's own."""
    if store == "sqlite":
        yield StorageDrill(
            certificate_client,
            object_storage(certificate_settings),
            lambda: folder_gone(certificate_settings.data_dir / "files"),
        )
        return
    s3 = request.getfixturevalue("s3_outage")
    settings = certificate_settings.model_copy(update={"s3_endpoint": s3.endpoint.endpoint, "s3_bucket": "drill"})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield StorageDrill(client, object_storage(settings), s3.refusing_connections)


@pytest.mark.drill
def test_storage_down_means_503_and_no_event(
    certificate_scenario: CertificateScenario, storage_drill: StorageDrill
) -> None:
    scenario = certificate_scenario
    party = scenario.provider()
    booking_id = scenario.booking_for(party)
    position = scenario.booking_event_position()
    upload = {"files": {"file": ("intyg.pdf", PDF, "application/pdf")}, "headers": party.provider}

    with storage_drill.outage():
        answer = storage_drill.client.post(f"/v1/bookings/{booking_id}/certificate", **upload)
        assert refused(answer) == (503, "storage_unavailable")
        readiness = storage_drill.client.get("/readyz")
        assert (readiness.status_code, list(readiness.json()["failing"])) == (503, ["object_storage"])

    assert scenario.booking_event_position() == position
    # Back again (moto forgets its buckets on a restart; a real S3 keeps them): uploads work.
    storage_drill.storage.ensure_ready()
    assert {stored.key for stored in storage_drill.storage.list_objects()} == set()
    retried = storage_drill.client.post(f"/v1/bookings/{booking_id}/certificate", **upload)
    assert retried.status_code == 201, retried.text


@pytest.mark.drill
def test_a_file_already_issued_is_issued_again_without_the_storage(
    certificate_scenario: CertificateScenario, storage_drill: StorageDrill
) -> None:
    """Its object stays as long as a certificate references it: nothing to store again."""
    scenario = certificate_scenario
    party = scenario.provider()
    upload = {"files": {"file": ("intyg.pdf", PDF, "application/pdf")}, "headers": party.provider}
    first = storage_drill.client.post(f"/v1/bookings/{scenario.booking_for(party)}/certificate", **upload)
    assert first.status_code == 201, first.text
    known = storage_drill.client.get(
        f"/v1/certificates/{first.json()['certificate_id']}",
        headers={**scenario.staff, "X-Min-Position": first.headers["x-event-position"]},
    )
    assert known.status_code == 200, known.text
    booking_id = scenario.booking_for(party)

    with storage_drill.outage():
        again = storage_drill.client.post(f"/v1/bookings/{booking_id}/certificate", **upload)

    assert again.status_code == 201, again.text
    assert again.json()["sha256"] == first.json()["sha256"]
    assert active_certificate(scenario, booking_id).json()["certificate_id"] == again.json()["certificate_id"]


def test_a_refused_record_leaves_no_certificate_and_no_file(
    certificate_scenario: CertificateScenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The booking changes between the check and the record: the booking service refuses the record."""
    scenario = certificate_scenario
    party = scenario.provider()
    booking_id = scenario.booking_for(party)
    record_upload = BookingGateway.record_upload

    async def status_changes_first(self: BookingGateway, *args: Any) -> Any:
        scenario.set_status(party, booking_id, "failed")
        return await record_upload(self, *args)

    monkeypatch.setattr(BookingGateway, "record_upload", status_changes_first)
    answer = scenario.upload(booking_id, party.provider, PDF)

    assert refused(answer) == (409, "booking_not_completed")
    assert scenario.stored_keys() == set()
    assert "CertificateUploaded" not in scenario.booking_event_types()
    assert active_certificate(scenario, booking_id).status_code == 404


def test_a_shared_file_survives_a_refused_record(
    certificate_scenario: CertificateScenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Objects are content-addressed: a failed upload must not delete a file a certificate uses."""
    scenario = certificate_scenario
    party = scenario.provider()
    issued_booking = scenario.booking_for(party, participant_id="anna")
    failing_booking = scenario.booking_for(party, participant_id="bertil")
    issued = scenario.upload(issued_booking, party.provider, PDF)
    assert issued.status_code == 201, issued.text
    record_upload = BookingGateway.record_upload

    async def status_changes_first(self: BookingGateway, *args: Any) -> Any:
        scenario.set_status(party, failing_booking, "failed")
        return await record_upload(self, *args)

    monkeypatch.setattr(BookingGateway, "record_upload", status_changes_first)
    assert refused(scenario.upload(failing_booking, party.provider, PDF)) == (409, "booking_not_completed")

    assert scenario.stored_keys() == {key_of(PDF)}
    download = scenario.certificates.get(
        f"/v1/certificates/{issued.json()['certificate_id']}/file",
        headers={**scenario.staff, "X-Min-Position": issued.headers["x-event-position"]},
    )
    assert download.content == PDF


def test_a_refused_record_puts_back_the_file_an_upload_claimed_meanwhile(
    certificate_scenario: CertificateScenario,
    certificate_settings: CertificateSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another upload of the same bytes begins after the refused one found the file unneeded, and
    finds it still stored (so stores nothing): the refused upload must not leave it deleted."""
    scenario = certificate_scenario
    party = scenario.provider()
    failing_booking = scenario.booking_for(party)
    record_upload = BookingGateway.record_upload

    async def status_changes_first(self: BookingGateway, *args: Any) -> Any:
        scenario.set_status(party, failing_booking, "failed")
        return await record_upload(self, *args)

    adapter = type(scenario.storage)  # the app's storage is of the same class
    delete = adapter.delete
    intents = open_store(certificate_settings, UploadIntents, "certificate_uploads")

    def another_upload_begins_first(self: ObjectStorage, key: str) -> None:
        intents.begin(str(uuid.uuid4()), key.rsplit("/", 1)[-1], datetime.now(UTC))
        delete(self, key)

    monkeypatch.setattr(BookingGateway, "record_upload", status_changes_first)
    monkeypatch.setattr(adapter, "delete", another_upload_begins_first)
    try:
        answer = scenario.upload(failing_booking, party.provider, PDF)
    finally:
        intents.datastore.close()

    assert refused(answer) == (409, "booking_not_completed")
    assert scenario.stored_keys() == {key_of(PDF)}


def test_booking_service_gone_before_the_record_removes_the_file(
    certificate_scenario: CertificateScenario, booking_server: ServedApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = certificate_scenario
    party = scenario.provider()
    booking_id = scenario.booking_for(party)
    record_upload = BookingGateway.record_upload

    async def booking_service_stops_first(self: BookingGateway, *args: Any) -> Any:
        booking_server.stop()
        return await record_upload(self, *args)

    monkeypatch.setattr(BookingGateway, "record_upload", booking_service_stops_first)
    answer = scenario.upload(booking_id, party.provider, PDF)

    assert refused(answer) == (503, "booking_unavailable")
    assert scenario.stored_keys() == set()
    assert "CertificateUploaded" not in scenario.booking_event_types()


def test_a_lost_answer_keeps_the_file_until_the_sweep_knows_the_outcome(
    certificate_scenario: CertificateScenario,
    certificate_settings: CertificateSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A record call without an answer may or may not have been recorded: only the sweep, once the
    registry has caught up, can tell a stray file from a certificate's file."""
    scenario = certificate_scenario
    party = scenario.provider()
    lost_request_booking = scenario.booking_for(party, participant_id="anna")
    lost_answer_booking = scenario.booking_for(party, participant_id="bertil")
    send = httpx.AsyncClient.request

    def losing(after_sending: bool) -> Callable[..., Any]:
        async def request(self: httpx.AsyncClient, method: str, url: str, **options: Any) -> httpx.Response:
            if not url.endswith(RECORD_PATH_END):
                return await send(self, method, url, **options)
            if after_sending:
                await send(self, method, url, **options)
            raise httpx.ReadTimeout("no answer", request=httpx.Request(method, url))

        return request

    monkeypatch.setattr(httpx.AsyncClient, "request", losing(after_sending=False))
    assert refused(scenario.upload(lost_request_booking, party.provider, PDF)) == (503, "booking_unavailable")
    monkeypatch.setattr(httpx.AsyncClient, "request", losing(after_sending=True))
    assert refused(scenario.upload(lost_answer_booking, party.provider, OTHER_PDF)) == (503, "booking_unavailable")
    monkeypatch.undo()

    assert scenario.stored_keys() == {key_of(PDF), key_of(OTHER_PDF)}
    assert active_certificate(scenario, lost_request_booking).status_code == 404
    recorded = active_certificate(scenario, lost_answer_booking)
    assert recorded.status_code == 200, recorded.text
    assert run_sweep(certificate_settings, grace=timedelta(0)) == [key_of(PDF)]
    assert scenario.stored_keys() == {key_of(OTHER_PDF)}
    download = scenario.certificates.get(
        f"/v1/certificates/{recorded.json()['certificate_id']}/file", headers=scenario.staff
    )
    assert download.content == OTHER_PDF


def put_orphan(storage: ObjectStorage, directory: Path) -> str:
    content = f"%PDF-1.7 orphan {uuid.uuid4()}".encode()
    path = directory / f"{uuid.uuid4()}.pdf"
    path.write_bytes(content)
    sha256 = hashlib.sha256(content).hexdigest()
    storage.put_file(certificate_object_key(sha256), path, size=len(content), sha256=sha256)
    return certificate_object_key(sha256)


def test_the_sweep_removes_old_unreferenced_files_only(
    certificate_scenario: CertificateScenario, certificate_settings: CertificateSettings, tmp_path: Path
) -> None:
    scenario = certificate_scenario
    storage = scenario.storage
    party = scenario.provider()
    issued = scenario.upload(scenario.booking_for(party), party.provider, PDF)
    assert issued.status_code == 201, issued.text
    assert scenario.certificate(issued.json()["certificate_id"], issued.headers["x-event-position"]).status_code == 200
    old_orphan = put_orphan(storage, tmp_path)
    claimed_orphan = put_orphan(storage, tmp_path)
    time.sleep(1.05)  # S3 dates objects to the second: the young orphan must be visibly younger
    young_orphan = put_orphan(storage, tmp_path)
    cutoff = storage.stat(young_orphan).last_modified - timedelta(milliseconds=500)
    assert storage.stat(old_orphan).last_modified < cutoff
    now = datetime.now(UTC)
    intents = open_store(certificate_settings, UploadIntents, "certificate_uploads")
    try:
        # An upload of the claimed orphan's bytes is under way: its file must stay.
        intents.begin(str(uuid.uuid4()), claimed_orphan.rsplit("/", 1)[-1], now)
        registry = scenario.certificates.app.state.certificate_registry  # type: ignore[attr-defined]

        deleted = sweep_orphans(storage, registry, intents, grace=now - cutoff, now=now)
    finally:
        intents.datastore.close()

    assert deleted == [old_orphan]
    assert scenario.stored_keys() == {key_of(PDF), claimed_orphan, young_orphan}


def test_the_sweep_keeps_a_file_whose_upload_began_while_it_ran(
    certificate_scenario: CertificateScenario,
    certificate_settings: CertificateSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scenario = certificate_scenario
    storage = scenario.storage
    orphan = put_orphan(storage, tmp_path)
    now = datetime.now(UTC) + timedelta(seconds=5)  # every stored file is old enough to go
    intents = open_store(certificate_settings, UploadIntents, "certificate_uploads")
    list_objects = type(storage).list_objects

    def an_upload_of_the_orphan_begins(self: ObjectStorage, prefix: str = "") -> Iterator[StoredObject]:
        intents.begin(str(uuid.uuid4()), orphan.rsplit("/", 1)[-1], now)
        return list_objects(self, prefix)

    monkeypatch.setattr(type(storage), "list_objects", an_upload_of_the_orphan_begins)
    try:
        registry = scenario.certificates.app.state.certificate_registry  # type: ignore[attr-defined]
        deleted = sweep_orphans(storage, registry, intents, grace=timedelta(0), now=now)
    finally:
        intents.datastore.close()

    assert deleted == []
    monkeypatch.undo()
    assert scenario.stored_keys() == {orphan}


def test_no_file_is_served_when_the_download_cannot_be_recorded(
    certificate_scenario: CertificateScenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = certificate_scenario
    party = scenario.provider()
    issued = scenario.upload(scenario.booking_for(party), party.provider, PDF)
    assert issued.status_code == 201, issued.text
    url = f"/v1/certificates/{issued.json()['certificate_id']}/file"

    def event_store_down(*args: Any) -> int:
        raise PersistenceOperationalError("the certificate event store does not answer")

    monkeypatch.setattr(CertificateApplication, "record_download", event_store_down)
    answer = scenario.certificates.get(
        url, headers={**party.provider, "X-Min-Position": issued.headers["x-event-position"]}
    )

    assert refused(answer) == (503, "unavailable")
    assert PDF[:5] not in answer.content
