"""Certificate figures: end-to-end upload of real PDFs vs raw S3 puts, public verification vs a bare endpoint.

The certificate service runs as deployed: its API (uvicorn) and worker, the booking service it
asks and records with, a moto S3 server over HTTP for the files. Uploads are real PDFs from the
shared corpus (10 KB to 2 MB, the ones a provider could upload); the baseline puts the same
bytes with the minio SDK to the same S3 server.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

import httpx
import psycopg

from tests.bench.apps import BARE_PATH
from tests.bench.loadgen import RequestSpec
from tests.bench.processes import REPO, Server, start_process, start_uvicorn
from tests.bench.report import Figure
from tests.fixtures.s3 import MotoServer

if TYPE_CHECKING:
    from tests.bench.suite import Bench

CORPUS = REPO.parent / "shared" / "pdf-corpus"
SMALLEST_PDF, LARGEST_PDF = 10_000, 2_000_000
UPLOAD_CONNECTIONS = 4
# Enough new files that no connection runs out within a measuring window (no file is uploaded twice).
NEW_FILES_PER_CONNECTION = 60
# A booking gets one certificate, rarely a few: a booking per new file, so none piles up events.
BOOKINGS_PER_UPLOADER = NEW_FILES_PER_CONNECTION
VERIFY_CONNECTIONS = 32
UPLOAD_RATIO_TARGET = 0.5
VERIFY_RATIO_TARGET = 0.7
BUCKET = "certificates"
REGISTRY_TRACKING = "certificate_registry_tracking"


def corpus_pdfs() -> list[Path]:
    """The corpus files a provider could plausibly upload (not encrypted, no attachment), 10 KB–2 MB."""
    described = json.loads((CORPUS / "files.json").read_text(encoding="utf-8"))["data"]
    found = []
    for item in described:
        path = CORPUS / item["path"]
        if item["encrypted"] or "attachment" in item["path"] or not path.is_file():
            continue
        if SMALLEST_PDF <= path.stat().st_size <= LARGEST_PDF:
            found.append(path)
    return found


def upload_body(pdf: Path, folder: Path, *, variant: int | None = None) -> tuple[str, Path]:
    """The multipart body of an upload form (built by httpx), in a file; returns its content type and path.

    A `variant` ends the PDF with a comment naming it: the same document, but new bytes to check and store.
    """
    content = pdf.read_bytes() if variant is None else pdf.read_bytes() + f"\n%variant {variant}\n".encode()
    request = httpx.Request(
        "POST",
        "http://bench/",
        files={"file": (pdf.name, content, "application/pdf")},
        data={"contains_results": "false"},
    )
    body = folder / (f"{pdf.stem}.multipart" if variant is None else f"{pdf.stem}-{variant}.multipart")
    body.write_bytes(request.read())
    return request.headers["content-type"], body


class CertificateBench:
    def __init__(self, bench: Bench, booking: Server, folder: Path) -> None:
        self.bench = bench
        self.booking = booking
        self.folder = folder
        self.pdfs = corpus_pdfs()

    @contextmanager
    def servers(self) -> Iterator[tuple[Server, MotoServer]]:
        moto = MotoServer(self.folder / "moto.log")
        moto.start()
        try:
            env = {
                **self.bench.service_env,
                "BOOKING_URL": self.booking.base_url,
                "S3_ENDPOINT": moto.endpoint.endpoint,
                "S3_ACCESS_KEY": moto.access_key,
                "S3_SECRET_KEY": moto.secret_key,
                "S3_BUCKET": BUCKET,
                # One client (this machine) makes every request: the per-client limit must not bind.
                "VERIFY_RATE_PER_MINUTE": "100000000",
                "VERIFY_RATE_BURST": "100000000",
            }
            api = start_uvicorn(
                "certificate-api", "tests.bench.apps:certificate_app", env, workers=2, ready_path="/healthz"
            )
            worker = start_process(
                "certificate-worker",
                [sys.executable, "-c", "from services.certificate.worker import main; main()"],
                env,
            )
            try:
                yield api, moto
            finally:
                worker.stop()
                api.stop()
        finally:
            moto.stop()

    def run(self, bare: Server) -> None:
        with self.servers() as (api, moto):
            self.upload_figure(api, moto)
            self.verify_figure(api, bare)

    def upload_figure(self, api: Server, moto: MotoServer) -> None:
        """Two figures, each of one kind of upload: files issued before (checked and stored then:
        now recorded only), and files never uploaded before (each checked, stored and recorded).
        A window mixing both would measure how soon it runs out of new files."""
        bodies = [upload_body(pdf, self.folder) for pdf in self.pdfs]
        ids = self.bench.completed_bookings(UPLOAD_CONNECTIONS * BOOKINGS_PER_UPLOADER)
        self.issue_once(api, ids[0], bodies)
        self.bench.wait_for_projection(REGISTRY_TRACKING)
        connections = [
            [self.upload_request(booking_id, body) for booking_id in ids[c::UPLOAD_CONNECTIONS] for body in bodies]
            for c in range(UPLOAD_CONNECTIONS)
        ]
        label = f"upload (corpus PDFs issued before, {len(self.pdfs)} files), {UPLOAD_CONNECTIONS} conn."
        upload = self.bench.load(api, connections, label)
        new_files = [
            [
                self.upload_request(ids[c::UPLOAD_CONNECTIONS][n], body)
                for n in range(NEW_FILES_PER_CONNECTION)
                for body in [
                    upload_body(self.pdfs[n % len(self.pdfs)], self.folder, variant=c * NEW_FILES_PER_CONNECTION + n)
                ]
            ]
            for c in range(UPLOAD_CONNECTIONS)
        ]
        upload_new = self.bench.load(api, new_files, f"upload (new corpus PDF variants), {UPLOAD_CONNECTIONS} conn.")
        puts = self.bench.drive(
            "s3_put", UPLOAD_CONNECTIONS, f"raw S3 puts (minio SDK), {UPLOAD_CONNECTIONS} cl.",
            files=[str(p) for p in self.pdfs], endpoint=moto.endpoint.endpoint,
            access_key=moto.access_key, secret_key=moto.secret_key, bucket=BUCKET,
        )  # fmt: skip
        # The target is on new files: only they are checked, stored and recorded, as the puts store them.
        self.bench.report.add(
            Figure("f.upload_new_files_vs_s3_put", upload_new, puts, target_ratio=UPLOAD_RATIO_TARGET)
        )
        self.bench.report.add(Figure("f.upload_issued_before_vs_s3_put", upload, puts))

    def issue_once(self, api: Server, booking_id: UUID, bodies: list[tuple[str, Path]]) -> None:
        with httpx.Client(base_url=api.base_url, timeout=60) as client:
            for content_type, body_file in bodies:
                issued = client.post(
                    f"/v1/bookings/{booking_id}/certificate",
                    headers={**self.bench.provider_headers, "Content-Type": content_type},
                    content=body_file.read_bytes(),
                )
                issued.raise_for_status()

    def upload_request(self, booking_id: UUID, body: tuple[str, Path]) -> RequestSpec:
        content_type, body_file = body
        return RequestSpec(
            "POST",
            f"/v1/bookings/{booking_id}/certificate",
            {**self.bench.provider_headers, "Content-Type": content_type},
            body_file=str(body_file),
        )

    def verify_figure(self, api: Server, bare: Server) -> None:
        self.bench.wait_for_projection(REGISTRY_TRACKING)
        certificates = self.issued_certificates()
        accept = {"Accept": "application/json"}
        requests = [RequestSpec("GET", f"/verify/{c}", accept) for c in certificates]
        connections = [requests[i % len(requests) :] + requests[: i % len(requests)] for i in range(VERIFY_CONNECTIONS)]
        verify = self.bench.load(api, connections, f"GET /verify/{{id}} (JSON), {VERIFY_CONNECTIONS} conn.")
        bare_measure = self.bench.load(
            bare,
            [[RequestSpec("GET", BARE_PATH)]] * VERIFY_CONNECTIONS,
            f"bare FastAPI constant, {VERIFY_CONNECTIONS} conn.",
        )
        self.bench.report.add(Figure("f.verify_vs_bare", verify, bare_measure, target_ratio=VERIFY_RATIO_TARGET))

    def issued_certificates(self) -> list[UUID]:
        with psycopg.connect(self.bench.url) as conn:
            rows = conn.execute("SELECT certificate_id FROM certificate_registry ORDER BY certificate_id").fetchall()
        if not rows:
            msg = "no certificate was issued: the upload figure failed"
            raise RuntimeError(msg)
        return [UUID(row[0]) for row in rows]
