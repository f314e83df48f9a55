"""LinkedIn add-to-profile links for certificates (DESIGN.md, Verification)."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import quote, urlencode

ADD_TO_PROFILE = "https://www.linkedin.com/profile/add"


def add_to_profile_url(
    *,
    certification_name: str,
    organization_id: str | None,
    organization_name: str,
    issued_at: datetime,
    cert_url: str,
    cert_id: str,
) -> str:
    """The add-to-profile link; `organizationName` stands in when the provider linked no page."""
    organization = {"organizationId": organization_id} if organization_id else {"organizationName": organization_name}
    query = {
        "startTask": "CERTIFICATION_NAME",
        "name": certification_name,
        **organization,
        "issueYear": str(issued_at.year),
        "issueMonth": str(issued_at.month),
        "certUrl": cert_url,
        "certId": cert_id,
    }
    return f"{ADD_TO_PROFILE}?{urlencode(query, quote_via=quote, safe='')}"


def linkedin_company_url(organization_id: str) -> str:
    if not organization_id:
        msg = "a LinkedIn organization id is required"
        raise ValueError(msg)
    return f"https://www.linkedin.com/company/{quote(organization_id, safe='')}/"
