"""`python -m services.certificate.sweep`: deletes stored certificate files that nothing references.

An upload stores its file before the booking service records the certificate; when recording
fails in a way that leaves the outcome unknown (a timeout, a crash), the file stays behind. The
sweep deletes such files once they are older than the grace period (ORPHAN_GRACE_S), no
certificate in the registry references them and no recent upload of the same bytes is under way.
It refuses to run while the registry is behind the booking service's events.
"""

from __future__ import annotations

import argparse
import logging
from datetime import UTC, datetime, timedelta

from services.booking.application import BookingApplication
from services.certificate.main import object_storage
from services.certificate.projections import CERTIFICATE_REGISTRY, CertificateRegistry
from services.certificate.settings import CertificateSettings
from services.certificate.storage import ObjectStorage, StorageUnavailable, certificate_object_key
from services.certificate.uploads import UploadIntents
from shared.feed import open_event_recorder, open_view, wait_for_position
from shared.http import configure_logging
from shared.settings import load_settings
from shared.views import open_store

log = logging.getLogger(__name__)

OBJECT_PREFIX = "sha256/"
CATCH_UP_TIMEOUT_S = 30.0


def sweep_orphans(
    storage: ObjectStorage,
    registry: CertificateRegistry,
    intents: UploadIntents,
    *,
    grace: timedelta,
    now: datetime | None = None,
) -> list[str]:
    """Deletes the orphaned certificate files; returns their keys. The registry must be up to date."""
    cutoff = (now or datetime.now(UTC)) - grace
    referenced = registry.referenced_sha256s()
    deleted = []
    for stored in list(storage.list_objects(OBJECT_PREFIX)):
        sha256 = stored.key.rsplit("/", 1)[-1]
        if not _is_certificate_key(stored.key, sha256) or stored.last_modified >= cutoff:
            continue
        # Asked per file, just before its delete: an upload of these bytes may begin while the sweep runs.
        if sha256 in referenced or intents.is_claimed(sha256, cutoff):
            continue
        storage.delete(stored.key)
        deleted.append(stored.key)
        log.info("deleted orphaned certificate file %s", stored.key)
    intents.prune(before=cutoff)
    return deleted


def _is_certificate_key(key: str, sha256: str) -> bool:
    try:
        return certificate_object_key(sha256) == key
    except ValueError:
        return False


def run_sweep(settings: CertificateSettings, *, grace: timedelta) -> list[str]:
    """Waits until the registry has every booking event recorded so far, then sweeps."""
    booking_events = open_event_recorder(settings, BookingApplication)
    try:
        upstream_position = booking_events.max_notification_id()
    finally:
        booking_events.datastore.close()
    registry = open_view(settings, CERTIFICATE_REGISTRY, small_pool=True)
    intents = open_store(settings, UploadIntents, "certificate_uploads")
    try:
        if not wait_for_position(registry, BookingApplication.name, upstream_position, CATCH_UP_TIMEOUT_S):
            msg = "the certificate registry is behind the booking events (is the certificate worker running?)"
            raise SystemExit(f"not sweeping: {msg}")
        return sweep_orphans(object_storage(settings), registry, intents, grace=grace)
    finally:
        registry.datastore.close()
        intents.datastore.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--grace-s", type=int, help="minimum age of a file to delete (default: ORPHAN_GRACE_S)")
    args = parser.parse_args()
    settings = load_settings(CertificateSettings)
    assert isinstance(settings, CertificateSettings)
    configure_logging(settings.log_level, settings.log_format)
    grace = timedelta(seconds=settings.orphan_grace_s if args.grace_s is None else args.grace_s)
    try:
        deleted = run_sweep(settings, grace=grace)
    except StorageUnavailable as error:
        raise SystemExit(f"not sweeping: {error}") from None
    print(f"deleted {len(deleted)} orphaned certificate file(s)")


if __name__ == "__main__":
    main()
