"""The booking summary folded from events (pure): what the aggregate says, the version guard, and
a revocation that clears only the certificate it names."""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from uuid import uuid4

from hypothesis import given, settings
from hypothesis import strategies as st

from services.booking.api import BookingOut
from services.booking.domain import Booking, Status
from services.booking.projections import Summary, summarise
from tests.fixtures.booking_histories import PROVIDER, booking_after, commands


def fold(events: list[Any], summary: Summary | None = None, first_position: int = 1) -> Summary | None:
    for position, event in enumerate(events, first_position):
        summary = summarise(event, summary, position)
    return summary


@settings(max_examples=200, deadline=None)
@given(st.lists(commands, max_size=15))
def test_the_summary_of_any_history_says_what_the_aggregate_says(command_list: list[Any]) -> None:
    booking = booking_after(command_list)
    summary = fold(list(booking.collect_events()))
    assert summary is not None
    assert BookingOut.of_row(summary).model_dump(mode="json") == BookingOut.of(booking).model_dump(mode="json")
    assert summary["requested_position"] == 1


def completed_with_certificate() -> tuple[Booking, list[Any]]:
    booking = booking_after([("accept", None), ("status", Status.COMPLETED), ("upload", False)])
    return booking, list(booking.collect_events())


def test_an_event_the_summary_has_seen_changes_nothing() -> None:
    _, events = completed_with_certificate()
    summary = fold(events)
    assert summary is not None
    for event in events:
        assert summarise(event, summary, 99) is summary
    assert summary["requested_position"] == 1  # a second request does not move the booking in the lists


def test_an_update_without_a_summary_makes_none() -> None:
    _, events = completed_with_certificate()
    assert fold(events[1:]) is None


def test_a_revocation_clears_only_the_certificate_it_names() -> None:
    booking, events = completed_with_certificate()
    summary = fold(events)
    assert summary is not None and summary["certificate"] is not None

    booking.revoke_certificate(booking.active_certificate_id, "fel person", PROVIDER)  # type: ignore[arg-type]
    [revoked] = booking.collect_events()
    other = replace(revoked, certificate_id=uuid4())
    after_other = summarise(other, summary, 10)
    assert after_other is not None
    assert (after_other["certificate"], after_other["version"]) == (summary["certificate"], revoked.originator_version)

    after = summarise(revoked, summary, 10)
    assert after is not None
    assert (after["certificate"], after["version"]) == (None, revoked.originator_version)
