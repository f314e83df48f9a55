"""Certificate application: commands of the certificate service."""

from __future__ import annotations

from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import IntegrityError

from services.certificate.domain import CertificateAccessLog
from services.certificate.projections import RegisteredCertificate
from shared.auth import Principal, Role
from shared.errors import Conflict

MAX_CONCURRENCY_RETRIES = 20


def can_read_certificate(principal: Principal, certificate: RegisteredCertificate) -> bool:
    """The participant, the product's provider, the employer on the booking, staff (and services)."""
    match principal.role:
        case Role.STAFF | Role.SERVICE:
            return True
        case Role.PROVIDER:
            return principal.provider_id == certificate.provider_id
        case Role.PARTICIPANT:
            return principal.sub == certificate.participant_id
        case Role.EMPLOYER:
            return certificate.employer_id is not None and principal.employer_id == certificate.employer_id
    return False


class CertificateApplication(Application[UUID]):
    name = "certificate"

    def record_download(self, principal: Principal, certificate_id: UUID, booking_id: UUID) -> int:
        """Appends a download to the certificate's access log; returns the event position."""
        for _ in range(MAX_CONCURRENCY_RETRIES):
            try:
                log: CertificateAccessLog = self.repository.get(certificate_id)
            except AggregateNotFoundError:
                log = CertificateAccessLog(id=certificate_id, booking_id=booking_id)
            log.record_download(principal.sub, principal.role.value)
            try:
                recordings = self.save(log)
            except IntegrityError:
                continue  # another download was recorded at the same moment: append after it
            return recordings[-1].notification.id
        raise Conflict("Too many simultaneous downloads; try again.", code="concurrent_update")
