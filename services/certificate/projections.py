"""The certificate registry: every certificate ever issued, with its state and what verifying it shows.

Built from the booking service's events (certificates live on the Booking aggregate); the
provider and product rows follow the catalog events so the verify page shows current names.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Tracking
from eventsourcing.projection import Projection

from services.booking.application import BookingApplication
from services.booking.domain import Booking, Product, Provider
from services.booking.projections import iso
from shared.feed import ProjectionSpec
from shared.views import SqlView


@dataclass(frozen=True)
class RegisteredCertificate:
    """One issued certificate, joined with its booking, provider and product."""

    certificate_id: str
    booking_id: str
    product_id: str
    provider_id: str
    participant_id: str
    participant_name: str
    employer_id: str | None
    sha256: str
    size: int
    page_count: int
    file_name: str
    contains_results: bool
    certification_name: str
    state: str  # valid | revoked | superseded
    issued_at: datetime
    revoked_at: datetime | None
    revocation_reason: str | None
    superseded_by: str | None
    holder_public: bool
    provider_name: str | None
    provider_logo_url: str | None
    provider_linkedin_organization_id: str | None
    product_title: str | None

    @classmethod
    def of_row(cls, row: dict[str, Any]) -> RegisteredCertificate:
        return cls(
            **{
                **row,
                "contains_results": bool(row["contains_results"]),
                "holder_public": bool(row["holder_public"]),
                "issued_at": datetime.fromisoformat(row["issued_at"]),
                "revoked_at": datetime.fromisoformat(row["revoked_at"]) if row["revoked_at"] else None,
            }
        )


_SELECT_CERTIFICATES = (
    "SELECT c.certificate_id, c.booking_id, b.product_id, b.provider_id, b.participant_id, b.participant_name,"
    " b.employer_id, c.sha256, c.size, c.page_count, c.file_name, c.contains_results, c.certification_name,"
    " c.state, c.issued_at, c.revoked_at, c.revocation_reason, c.superseded_by, b.holder_public,"
    " p.name AS provider_name, p.logo_url AS provider_logo_url,"
    " p.linkedin_organization_id AS provider_linkedin_organization_id, pr.title AS product_title"
    " FROM certificate_registry c"
    " JOIN certificate_registry_bookings b ON b.booking_id = c.booking_id"
    " LEFT JOIN certificate_registry_providers p ON p.provider_id = b.provider_id"
    " LEFT JOIN certificate_registry_products pr ON pr.product_id = b.product_id"
)


class CertificateRegistry(SqlView):
    """Certificates by id, by file hash and by booking; bookings, providers and products they need."""

    tables = (
        "CREATE TABLE IF NOT EXISTS certificate_registry ("
        " certificate_id TEXT PRIMARY KEY, booking_id TEXT NOT NULL, sha256 TEXT NOT NULL,"
        " size BIGINT NOT NULL, page_count INTEGER NOT NULL, file_name TEXT NOT NULL,"
        " contains_results INTEGER NOT NULL, certification_name TEXT NOT NULL, state TEXT NOT NULL,"
        " issued_at TEXT NOT NULL, revoked_at TEXT, revocation_reason TEXT, superseded_by TEXT)",
        "CREATE INDEX IF NOT EXISTS certificate_registry_sha256 ON certificate_registry (sha256)",
        "CREATE INDEX IF NOT EXISTS certificate_registry_booking ON certificate_registry (booking_id, state)",
        "CREATE TABLE IF NOT EXISTS certificate_registry_bookings ("
        " booking_id TEXT PRIMARY KEY, product_id TEXT NOT NULL, provider_id TEXT NOT NULL,"
        " participant_id TEXT NOT NULL, participant_name TEXT NOT NULL, employer_id TEXT,"
        " holder_public INTEGER NOT NULL)",
        "CREATE TABLE IF NOT EXISTS certificate_registry_providers ("
        " provider_id TEXT PRIMARY KEY, name TEXT NOT NULL, logo_url TEXT, linkedin_organization_id TEXT)",
        "CREATE TABLE IF NOT EXISTS certificate_registry_products ("
        " product_id TEXT PRIMARY KEY, provider_id TEXT NOT NULL, title TEXT NOT NULL, certification_name TEXT)",
    )
    table_names = (
        "certificate_registry",
        "certificate_registry_bookings",
        "certificate_registry_providers",
        "certificate_registry_products",
    )

    # --- queries -------------------------------------------------------------------------------

    def get(self, certificate_id: str) -> RegisteredCertificate | None:
        return self._one(f"{_SELECT_CERTIFICATES} WHERE c.certificate_id = :id", {"id": certificate_id})

    def get_by_sha256(self, sha256: str) -> RegisteredCertificate | None:
        """The certificate issued with exactly this file: the valid one if any, else the latest."""
        return self._one(
            f"{_SELECT_CERTIFICATES} WHERE c.sha256 = :sha256"
            " ORDER BY CASE WHEN c.state = 'valid' THEN 0 ELSE 1 END, c.issued_at DESC LIMIT 1",
            {"sha256": sha256},
        )

    def active_for_booking(self, booking_id: str) -> RegisteredCertificate | None:
        return self._one(
            f"{_SELECT_CERTIFICATES} WHERE c.booking_id = :id AND c.state = 'valid' ORDER BY c.issued_at DESC LIMIT 1",
            {"id": booking_id},
        )

    def referenced_sha256s(self) -> set[str]:
        """Hashes of every file a certificate was issued with, whatever its state now."""
        return {row["sha256"] for row in self.fetch_all("SELECT DISTINCT sha256 FROM certificate_registry")}

    def references(self, sha256: str) -> bool:
        return (
            self.fetch_one("SELECT 1 AS found FROM certificate_registry WHERE sha256 = :s LIMIT 1", {"s": sha256})
            is not None
        )

    def tracked_position(self, application_name: str) -> int:
        """The last event of that application the registry has processed (0: none yet)."""
        return self.max_tracking_id(application_name) or 0  # type: ignore[attr-defined]

    def _one(self, statement: str, params: dict[str, Any]) -> RegisteredCertificate | None:
        row = self.fetch_one(statement, params)
        return RegisteredCertificate.of_row(row) if row else None

    # --- changes (one transaction with the tracking position each) -----------------------------

    def write(self, tracking: Tracking, *statements: tuple[str, dict[str, Any]]) -> None:
        def apply(cursor: Any) -> None:
            for statement, params in statements:
                self.execute(cursor, statement, params)

        self.record(tracking, apply)


class CertificateRegistryProjection(Projection[CertificateRegistry]):
    name = "certificate_registry"

    @singledispatchmethod
    def process_event(self, domain_event: DomainEventProtocol[UUID], tracking: Tracking) -> None:
        """Events that change no registry row still advance the position."""
        self.view.record(tracking)

    # --- catalog -------------------------------------------------------------------------------

    @process_event.register(Provider.ProviderRegistered)
    def _provider_registered(self, event: Any, tracking: Tracking) -> None:
        self.view.write(
            tracking,
            (
                "INSERT INTO certificate_registry_providers (provider_id, name, logo_url, linkedin_organization_id)"
                " VALUES (:id, :name, :logo_url, :linkedin) ON CONFLICT DO NOTHING",
                {
                    "id": str(event.originator_id),
                    "name": event.name,
                    "logo_url": event.logo_url,
                    "linkedin": event.linkedin_organization_id,
                },
            ),
        )

    @process_event.register(Provider.LinkedInPageLinked)
    def _linkedin_linked(self, event: Any, tracking: Tracking) -> None:
        self.view.write(
            tracking,
            (
                "UPDATE certificate_registry_providers SET linkedin_organization_id = :linkedin"
                " WHERE provider_id = :id",
                {"id": str(event.originator_id), "linkedin": event.organization_id},
            ),
        )

    @process_event.register(Product.ProductRegistered)
    def _product_registered(self, event: Any, tracking: Tracking) -> None:
        self.view.write(
            tracking,
            (
                "INSERT INTO certificate_registry_products (product_id, provider_id, title, certification_name)"
                " VALUES (:id, :provider_id, :title, NULL) ON CONFLICT DO NOTHING",
                {"id": str(event.originator_id), "provider_id": str(event.provider_id), "title": event.title},
            ),
        )

    @process_event.register(Product.CertificationDefined)
    def _certification_defined(self, event: Any, tracking: Tracking) -> None:
        self.view.write(
            tracking,
            (
                "UPDATE certificate_registry_products SET certification_name = :name WHERE product_id = :id",
                {"id": str(event.originator_id), "name": event.name},
            ),
        )

    # --- bookings and their certificates -------------------------------------------------------

    @process_event.register(Booking.BookingRequested)
    def _booking_requested(self, event: Any, tracking: Tracking) -> None:
        self.view.write(
            tracking,
            (
                "INSERT INTO certificate_registry_bookings (booking_id, product_id, provider_id, participant_id,"
                " participant_name, employer_id, holder_public)"
                " VALUES (:id, :product_id, :provider_id, :participant_id, :participant_name, :employer_id, 0)"
                " ON CONFLICT DO NOTHING",
                {
                    "id": str(event.originator_id),
                    "product_id": str(event.product_id),
                    "provider_id": str(event.provider_id),
                    "participant_id": event.participant["id"],
                    "participant_name": event.participant["name"],
                    "employer_id": event.employer_id,
                },
            ),
        )

    @process_event.register(Booking.CertificateUploaded)
    def _certificate_uploaded(self, event: Any, tracking: Tracking) -> None:
        certificate_id = str(event.certificate_id)
        statements = [
            (
                "INSERT INTO certificate_registry (certificate_id, booking_id, sha256, size, page_count, file_name,"
                " contains_results, certification_name, state, issued_at)"
                " VALUES (:id, :booking_id, :sha256, :size, :page_count, :file_name, :contains_results,"
                " :certification_name, 'valid', :issued_at) ON CONFLICT DO NOTHING",
                {
                    "id": certificate_id,
                    "booking_id": str(event.originator_id),
                    "sha256": event.sha256,
                    "size": event.size,
                    "page_count": event.page_count,
                    "file_name": event.file_name,
                    "contains_results": int(event.contains_results),
                    "certification_name": event.certification_name,
                    "issued_at": iso(event.issued_at),
                },
            )
        ]
        if event.supersedes is not None:
            statements.append(
                (
                    "UPDATE certificate_registry SET state = 'superseded', superseded_by = :new"
                    " WHERE certificate_id = :old",
                    {"new": certificate_id, "old": str(event.supersedes)},
                )
            )
        self.view.write(tracking, *statements)

    @process_event.register(Booking.CertificateRevoked)
    def _certificate_revoked(self, event: Any, tracking: Tracking) -> None:
        self.view.write(
            tracking,
            (
                "UPDATE certificate_registry SET state = 'revoked', revoked_at = :at, revocation_reason = :reason"
                " WHERE certificate_id = :id",
                {"id": str(event.certificate_id), "at": iso(event.timestamp), "reason": event.reason},
            ),
        )

    @process_event.register(Booking.CertificateVisibilityChanged)
    def _visibility_changed(self, event: Any, tracking: Tracking) -> None:
        # The holder's choice is per booking: it carries over to a certificate that supersedes this one.
        self.view.write(
            tracking,
            (
                "UPDATE certificate_registry_bookings SET holder_public = :public WHERE booking_id = :id",
                {"id": str(event.originator_id), "public": int(event.public)},
            ),
        )


CERTIFICATE_REGISTRY = ProjectionSpec(CertificateRegistryProjection, CertificateRegistry, BookingApplication)
