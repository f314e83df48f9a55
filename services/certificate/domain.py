"""Certificate bounded context: the record of who read a certificate file.

Certificates themselves are recorded on the Booking aggregate (CertificateUploaded,
CertificateRevoked, ...); this service adds the access log that privacy requires.
"""

from __future__ import annotations

from uuid import UUID

from eventsourcing.domain import Aggregate, event


class CertificateAccessLog(Aggregate):
    """Every download of one certificate's file, in order. Id: the certificate id."""

    @event("AccessLogOpened")
    def __init__(self, id: UUID, booking_id: UUID) -> None:
        self.booking_id = booking_id
        self.downloads = 0

    @event("CertificateDownloaded")
    def record_download(self, actor_id: str, actor_role: str) -> None:
        self.downloads += 1
