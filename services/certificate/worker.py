"""`certificate-worker`: the certificate service's read models, as one process (production mode)."""

from __future__ import annotations

from services.certificate.main import PROJECTIONS
from services.certificate.settings import CertificateSettings
from shared.http import configure_logging
from shared.settings import load_settings
from shared.worker import run_workers


def main() -> None:
    settings = load_settings(CertificateSettings)
    configure_logging(settings.log_level, settings.log_format)
    run_workers(settings, PROJECTIONS)
