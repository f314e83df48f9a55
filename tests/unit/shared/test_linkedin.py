from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.linkedin import add_to_profile_url, linkedin_company_url

ISSUED = datetime(2024, 3, 7, 14, 30, tzinfo=UTC)


def _url(**overrides) -> str:
    arguments = {
        "certification_name": "Certified Scrum Master",
        "organization_id": "1337",
        "organization_name": "Acme Training AB",
        "issued_at": ISSUED,
        "cert_url": "https://cert.example.se/verify/c-123",
        "cert_id": "c-123",
    }
    return add_to_profile_url(**arguments | overrides)


def test_exact_link_with_organization_id():
    assert _url() == (
        "https://www.linkedin.com/profile/add?startTask=CERTIFICATION_NAME"
        "&name=Certified%20Scrum%20Master&organizationId=1337&issueYear=2024&issueMonth=3"
        "&certUrl=https%3A%2F%2Fcert.example.se%2Fverify%2Fc-123&certId=c-123"
    )


@pytest.mark.parametrize("missing_id", [None, ""])
def test_organization_name_when_no_linkedin_page(missing_id):
    url = _url(organization_id=missing_id, organization_name="Åkes Kurser & Co")
    assert "organizationId" not in url
    assert "&organizationName=%C3%85kes%20Kurser%20%26%20Co&" in url


@pytest.mark.parametrize(("month", "expected"), [(1, "1"), (9, "9"), (12, "12")])
def test_month_is_one_based_and_not_padded(month, expected):
    url = _url(issued_at=ISSUED.replace(month=month))
    assert parse_qs(urlsplit(url).query)["issueMonth"] == [expected]


def test_year_and_month_in_the_timezone_of_the_timestamp():
    stockholm_new_year = datetime(2025, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))
    query = parse_qs(urlsplit(_url(issued_at=stockholm_new_year)).query)
    assert (query["issueYear"], query["issueMonth"]) == (["2025"], ["1"])


def test_reserved_characters_in_values_cannot_inject_parameters():
    url = _url(certification_name="A&certId=forged+x=y #1", cert_id="c/1?x")
    query = parse_qs(urlsplit(url).query)
    assert query["name"] == ["A&certId=forged+x=y #1"]
    assert query["certId"] == ["c/1?x"]
    assert " " not in url and "+" not in url


nullable_id = st.one_of(st.none(), st.just(""), st.text())


@given(
    certification_name=st.text(),
    organization_id=nullable_id,
    organization_name=st.text(),
    issued_at=st.datetimes(timezones=st.timezones()),
    cert_url=st.text(),
    cert_id=st.text(),
)
def test_every_value_survives_a_round_trip(
    certification_name, organization_id, organization_name, issued_at, cert_url, cert_id
):
    url = add_to_profile_url(
        certification_name=certification_name,
        organization_id=organization_id,
        organization_name=organization_name,
        issued_at=issued_at,
        cert_url=cert_url,
        cert_id=cert_id,
    )
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://www.linkedin.com/profile/add"
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=True)
    assert all(len(values) == 1 for values in query.values())
    values = {key: value[0] for key, value in query.items()}

    assert values.pop("startTask") == "CERTIFICATION_NAME"
    assert values.pop("name") == certification_name
    assert values.pop("certUrl") == cert_url
    assert values.pop("certId") == cert_id
    assert values.pop("issueYear") == str(issued_at.year)
    month = values.pop("issueMonth")
    assert month == str(issued_at.month) and 1 <= int(month) <= 12
    if organization_id:
        assert values == {"organizationId": organization_id}
    else:
        assert values == {"organizationName": organization_name}


def test_company_url_encodes_the_id():
    assert linkedin_company_url("1337") == "https://www.linkedin.com/company/1337/"
    assert linkedin_company_url("acme training/../x") == ("https://www.linkedin.com/company/acme%20training%2F..%2Fx/")


def test_company_url_needs_an_id():
    with pytest.raises(ValueError):
        linkedin_company_url("")
