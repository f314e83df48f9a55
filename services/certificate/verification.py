"""The public verification answer, built from a certificate registry row (pure: no I/O).

What a stranger holding a certificate id or file may learn: state (valid, revoked with its date,
superseded, not found), certification, provider, issue date, and the holder's full name only if
the participant made it public (initials otherwise). Never email, grades, file details,
status history, nor the revocation reason (automatic reasons name the participation status).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from services.certificate.projections import RegisteredCertificate
from shared.linkedin import add_to_profile_url, linkedin_company_url

VerificationState = Literal["valid", "revoked", "superseded", "not_found"]
# An unknown id is echoed back; a longer one is cut, so an answer stays small.
MAX_ECHOED_ID_LENGTH = 100


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CertificationOut(_Answer):
    name: str


class ProviderOut(_Answer):
    name: str
    logo_url: str | None
    linkedin_url: str | None = Field(description="The provider's LinkedIn page, when linked")


class HolderOut(_Answer):
    name: str | None = Field(description="Full name, only when the participant made it public")
    initials: str


class VerificationAnswer(_Answer):
    """The signed facts (timestamps in ISO 8601 with offset); a not_found answer has only the
    asked id, the file fields and checked_at set. Every field is always present."""

    certificate_id: str | None = Field(description="Null when a file matched no certificate")
    state: VerificationState
    revoked_at: str | None = None
    certification: CertificationOut | None = None
    provider: ProviderOut | None = None
    issued_at: str | None = None
    holder: HolderOut | None = None
    file_matches: bool | None = Field(
        default=None, description="POST /verify: the file is exactly the issued one; null for GET"
    )
    file_sha256: str | None = Field(default=None, description="POST /verify: SHA-256 of the file checked; null for GET")
    checked_at: str


def verification_answer(
    certificate: RegisteredCertificate | None,
    *,
    asked_id: str | None,
    checked_at: datetime,
    file_sha256: str | None = None,
) -> dict:
    """The answer as a JSON-ready dict; `file_sha256` is given when a file was checked."""
    checked = {
        "file_matches": None if file_sha256 is None else certificate is not None,
        "file_sha256": file_sha256,
        "checked_at": checked_at.isoformat(timespec="seconds"),
    }
    if certificate is None:
        echoed_id = asked_id[:MAX_ECHOED_ID_LENGTH] if asked_id is not None else None
        return VerificationAnswer(certificate_id=echoed_id, state="not_found", **checked).model_dump(mode="json")
    return VerificationAnswer(
        certificate_id=certificate.certificate_id,
        state=_state(certificate.state),
        revoked_at=certificate.revoked_at.isoformat() if certificate.revoked_at else None,
        certification=CertificationOut(name=certificate.certification_name),
        provider=_provider(certificate),
        issued_at=certificate.issued_at.isoformat(),
        holder=HolderOut(
            name=certificate.participant_name if certificate.holder_public else None,
            initials=initials(certificate.participant_name),
        ),
        **checked,
    ).model_dump(mode="json")


def canonical_certificate_id(raw: str) -> str | None:
    """The registry's spelling of a certificate id (a UUID in any common form), or None."""
    try:
        return str(UUID(raw))
    except ValueError:
        return None


def initials(full_name: str) -> str:
    """ "Anna-Karin van Dijk" → "A.-K. V. D." """
    return " ".join(
        "-".join(f"{piece[0].upper()}." for piece in word.split("-") if piece) for word in full_name.split()
    )


def verify_url(certificate_base_url: str, certificate_id: str) -> str:
    return f"{certificate_base_url.rstrip('/')}/verify/{certificate_id}"


def linkedin_add_url(certificate: RegisteredCertificate, certificate_base_url: str) -> str | None:
    """The holder's add-to-profile link, for a valid certificate only."""
    if certificate.state != "valid":
        return None
    return add_to_profile_url(
        certification_name=certificate.certification_name,
        organization_id=certificate.provider_linkedin_organization_id,
        organization_name=certificate.provider_name or "",
        issued_at=certificate.issued_at,
        cert_url=verify_url(certificate_base_url, certificate.certificate_id),
        cert_id=certificate.certificate_id,
    )


def _state(registry_state: str) -> VerificationState:
    if registry_state not in ("valid", "revoked", "superseded"):
        raise ValueError(f"unknown certificate state in the registry: {registry_state!r}")
    return registry_state  # type: ignore[return-value]


def _provider(certificate: RegisteredCertificate) -> ProviderOut | None:
    if certificate.provider_name is None:
        return None
    organization_id = certificate.provider_linkedin_organization_id
    return ProviderOut(
        name=certificate.provider_name,
        logo_url=certificate.provider_logo_url,
        linkedin_url=linkedin_company_url(organization_id) if organization_id else None,
    )
