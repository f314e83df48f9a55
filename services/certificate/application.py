"""Certificate application: commands of the certificate service."""

from __future__ import annotations

from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import IntegrityError

from services.certificate.domain import CertificateAccessLog
from shared.auth import Principal
from shared.errors import Conflict

MAX_CONCURRENCY_RETRIES = 20


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
