"""Booking bounded context: providers, products and bookings with their participation status.

Pure domain: aggregates, events and rules. Every event records who acted (`actor_id`,
`actor_role`); the library stamps each event with the time the command ran.
Event class names are part of the contract (audit trail, downstream services): never rename them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from shared.errors import Conflict, Invalid


class Status(StrEnum):
    UNKNOWN = "unknown"
    ENROLLED = "enrolled"
    STARTED = "started"
    NO_SHOW = "no_show"
    FAILED = "failed"
    COMPLETED = "completed"


STATUS_LABELS: dict[Status, dict[str, str]] = {
    Status.UNKNOWN: {"en": "Unknown", "sv": "Okänt"},
    Status.ENROLLED: {"en": "Enrolled", "sv": "Anmäld"},
    Status.STARTED: {"en": "Started", "sv": "Startat"},
    Status.NO_SHOW: {"en": "No-show", "sv": "Utebliven närvaro"},
    Status.FAILED: {"en": "Failed", "sv": "Inte godkänd"},
    Status.COMPLETED: {"en": "Completed", "sv": "Fullföljd"},
}

SETTABLE_STATUSES = frozenset(Status) - {Status.UNKNOWN}


class BookingState(StrEnum):
    REQUESTED = "requested"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    CANCELLED = "cancelled"


class CertificateState(StrEnum):
    VALID = "valid"
    REVOKED = "revoked"
    SUPERSEDED = "superseded"


@dataclass(frozen=True)
class Actor:
    """Who performs a command, as recorded on every event."""

    id: str
    role: str


class Provider(Aggregate):
    @event("ProviderRegistered")
    def __init__(
        self,
        id: UUID,
        name: str,
        linkedin_organization_id: str | None,
        logo_url: str | None,
        actor_id: str,
        actor_role: str,
    ) -> None:
        self.name = name
        self.linkedin_organization_id = linkedin_organization_id
        self.logo_url = logo_url

    def link_linkedin_page(self, organization_id: str, actor: Actor) -> None:
        if organization_id != self.linkedin_organization_id:
            self._linkedin_page_linked(organization_id, actor.id, actor.role)

    @event("LinkedInPageLinked")
    def _linkedin_page_linked(self, organization_id: str, actor_id: str, actor_role: str) -> None:
        self.linkedin_organization_id = organization_id


class Product(Aggregate):
    @event("ProductRegistered")
    def __init__(
        self,
        id: UUID,
        provider_id: UUID,
        title: str,
        actor_id: str,
        actor_role: str,
    ) -> None:
        self.provider_id = provider_id
        self.title = title
        self.certification_name: str | None = None

    def define_certification(self, name: str, actor: Actor) -> None:
        if name != self.certification_name:
            self._certification_defined(name, actor.id, actor.role)

    @event("CertificationDefined")
    def _certification_defined(self, name: str, actor_id: str, actor_role: str) -> None:
        self.certification_name = name


@dataclass(frozen=True)
class CertificateFile:
    """What the certificate service learnt about an uploaded file."""

    certificate_id: UUID
    sha256: str
    size: int
    page_count: int
    file_name: str
    contains_results: bool


class Booking(Aggregate):
    @event("BookingRequested")
    def __init__(
        self,
        id: UUID,
        product_id: UUID,
        provider_id: UUID,
        participant: dict[str, str],
        employer_id: str | None,
        actor_id: str,
        actor_role: str,
    ) -> None:
        self.product_id = product_id
        self.provider_id = provider_id
        self.participant = participant
        self.employer_id = employer_id
        self.state = BookingState.REQUESTED
        self.status = Status.UNKNOWN
        self.results_consent = False
        self.review: dict[str, Any] | None = None
        self.certificates: dict[UUID, dict[str, Any]] = {}
        self.active_certificate_id: UUID | None = None
        self.holder_name_public = False

    # --- rules -------------------------------------------------------------------------------

    @property
    def participant_id(self) -> str:
        return self.participant["id"]

    @property
    def active_certificate(self) -> dict[str, Any] | None:
        if self.active_certificate_id is None:
            return None
        return self.certificates[self.active_certificate_id]

    def _require_open(self, action: str) -> None:
        if self.state in (BookingState.DECLINED, BookingState.CANCELLED):
            raise Conflict(f"The booking was {self.state.value}; it cannot {action}.", code="booking_closed")

    def _require_accepted(self, action: str) -> None:
        self._require_open(action)
        if self.state is not BookingState.ACCEPTED:
            raise Conflict(
                f"The booking request has not been accepted yet; accept it before you {action}.",
                code="booking_not_accepted",
            )

    # --- commands ------------------------------------------------------------------------------

    def accept(self, actor: Actor) -> None:
        self._require_open("be accepted")
        if self.state is BookingState.ACCEPTED:
            return
        self._accepted(actor.id, actor.role)

    def decline(self, reason: str, actor: Actor) -> None:
        self._require_open("be declined")
        if self.state is BookingState.ACCEPTED:
            raise Conflict("An accepted booking cannot be declined; cancel it instead.", code="booking_accepted")
        self._declined(reason, actor.id, actor.role)

    def cancel(self, reason: str, actor: Actor) -> None:
        self._require_open("be cancelled")
        self._revoke_active(f"the booking was cancelled: {reason}", actor)
        self._cancelled(reason, actor.id, actor.role)

    def change_status(self, new_status: Status, actor: Actor) -> None:
        if new_status not in SETTABLE_STATUSES:
            raise Invalid(
                f"'{new_status.value}' cannot be set; choose one of "
                f"{', '.join(sorted(s.value for s in SETTABLE_STATUSES))}.",
                code="invalid_status",
            )
        self._require_accepted("change its participation status")
        if new_status is self.status:
            return
        old_status = self.status
        self._status_changed(old_status.value, new_status.value, actor.id, actor.role)
        if old_status is Status.COMPLETED:
            self._revoke_active(f"participation status changed from {old_status.value} to {new_status.value}", actor)

    def give_results_consent(self, actor: Actor) -> None:
        self._require_open("record consent")
        if not self.results_consent:
            self._consent_given(actor.id, actor.role)

    def withdraw_results_consent(self, actor: Actor) -> None:
        self._require_open("record consent")
        if not self.results_consent:
            return
        self._consent_withdrawn(actor.id, actor.role)
        active = self.active_certificate
        if active is not None and active["contains_results"]:
            self._revoke_active("the participant withdrew consent to share results", actor)

    def submit_review(self, rating: int, text: str | None, actor: Actor) -> None:
        self._require_accepted("review it")
        if self.status is not Status.COMPLETED:
            raise Conflict("A review can be left once the course is completed.", code="booking_not_completed")
        if not 1 <= rating <= 5:
            raise Invalid("The rating must be a whole number from 1 to 5.", code="invalid_rating")
        self._review_submitted(rating, text, actor.id, actor.role)

    def upload_certificate(
        self, certificate: CertificateFile, certification_name: str | None, issued_at: datetime, actor: Actor
    ) -> None:
        self._require_accepted("receive a certificate")
        if self.status is not Status.COMPLETED:
            raise Conflict(
                "A certificate can only be uploaded once the participation status is Completed; "
                "set the status to Completed first.",
                code="booking_not_completed",
            )
        if not certification_name:
            raise Conflict(
                "The product has no certification yet: add a certification to the product first.",
                code="certification_missing",
            )
        if certificate.contains_results and not self.results_consent:
            raise Conflict(
                "This certificate contains results (grades or scores): the participant must give "
                "consent to share results before you upload it.",
                code="results_consent_missing",
            )
        if certificate.certificate_id in self.certificates:
            raise Conflict("This certificate id is already used.", code="certificate_exists")
        self._certificate_uploaded(
            certificate_id=certificate.certificate_id,
            sha256=certificate.sha256,
            size=certificate.size,
            page_count=certificate.page_count,
            file_name=certificate.file_name,
            contains_results=certificate.contains_results,
            certification_name=certification_name,
            issued_at=issued_at,
            supersedes=self.active_certificate_id,
            actor_id=actor.id,
            actor_role=actor.role,
        )

    def revoke_certificate(self, certificate_id: UUID, reason: str, actor: Actor) -> None:
        certificate = self.certificates.get(certificate_id)
        if certificate is None:
            raise Conflict("No such certificate on this booking.", code="certificate_unknown")
        if certificate["state"] != CertificateState.VALID:
            raise Conflict(f"The certificate is already {certificate['state']}.", code="certificate_not_valid")
        if not reason.strip():
            raise Invalid("Say why the certificate is revoked.", code="reason_required")
        self._certificate_revoked(certificate_id, reason, actor.id, actor.role)

    def change_certificate_visibility(self, certificate_id: UUID, public: bool, actor: Actor) -> None:
        if certificate_id not in self.certificates:
            raise Conflict("No such certificate on this booking.", code="certificate_unknown")
        if public != self.holder_name_public:
            self._visibility_changed(certificate_id, public, actor.id, actor.role)

    def _revoke_active(self, reason: str, actor: Actor) -> None:
        if self.active_certificate_id is not None:
            self._certificate_revoked(self.active_certificate_id, reason, actor.id, actor.role)

    # --- events (apply: pure state changes) ----------------------------------------------------

    @event("Accepted")
    def _accepted(self, actor_id: str, actor_role: str) -> None:
        self.state = BookingState.ACCEPTED
        self.status = Status.ENROLLED

    @event("Declined")
    def _declined(self, reason: str, actor_id: str, actor_role: str) -> None:
        self.state = BookingState.DECLINED

    @event("Cancelled")
    def _cancelled(self, reason: str, actor_id: str, actor_role: str) -> None:
        self.state = BookingState.CANCELLED

    @event("StatusChanged")
    def _status_changed(self, old_status: str, new_status: str, actor_id: str, actor_role: str) -> None:
        self.status = Status(new_status)

    @event("ResultsConsentGiven")
    def _consent_given(self, actor_id: str, actor_role: str) -> None:
        self.results_consent = True

    @event("ResultsConsentWithdrawn")
    def _consent_withdrawn(self, actor_id: str, actor_role: str) -> None:
        self.results_consent = False

    @event("ReviewSubmitted")
    def _review_submitted(self, rating: int, text: str | None, actor_id: str, actor_role: str) -> None:
        self.review = {"rating": rating, "text": text}

    @event("CertificateUploaded")
    def _certificate_uploaded(
        self,
        certificate_id: UUID,
        sha256: str,
        size: int,
        page_count: int,
        file_name: str,
        contains_results: bool,
        certification_name: str,
        issued_at: datetime,
        supersedes: UUID | None,
        actor_id: str,
        actor_role: str,
    ) -> None:
        if supersedes is not None:
            self.certificates[supersedes]["state"] = CertificateState.SUPERSEDED.value
        self.certificates[certificate_id] = {
            "certificate_id": certificate_id,
            "sha256": sha256,
            "size": size,
            "page_count": page_count,
            "file_name": file_name,
            "contains_results": contains_results,
            "certification_name": certification_name,
            "issued_at": issued_at,
            "state": CertificateState.VALID.value,
            "revocation_reason": None,
        }
        self.active_certificate_id = certificate_id

    @event("CertificateRevoked")
    def _certificate_revoked(self, certificate_id: UUID, reason: str, actor_id: str, actor_role: str) -> None:
        self.certificates[certificate_id]["state"] = CertificateState.REVOKED.value
        self.certificates[certificate_id]["revocation_reason"] = reason
        if self.active_certificate_id == certificate_id:
            self.active_certificate_id = None

    @event("CertificateVisibilityChanged")
    def _visibility_changed(self, certificate_id: UUID, public: bool, actor_id: str, actor_role: str) -> None:
        self.holder_name_public = public
