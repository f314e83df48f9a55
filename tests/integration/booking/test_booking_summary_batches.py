"""Set-based batches of the booking summaries: whatever events a batch holds, and wherever the
batches are cut, the rows are those of processing the events one at a time, and say what the
aggregates say."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.booking.api import BookingOut
from services.booking.domain import Status
from services.booking.projections import BOOKING_SUMMARIES, BookingSummaries, BookingSummaryProjection
from services.booking.settings import BookingSettings
from shared.feed import open_view
from tests.fixtures.booking_histories import batches, booking_after, histories, log_of


@pytest.fixture
def view(service_env: dict[str, Any]) -> Iterator[BookingSummaries]:
    summaries = open_view(BookingSettings(**service_env, run_workers=False), BOOKING_SUMMARIES)
    yield summaries
    summaries.datastore.close()  # type: ignore[attr-defined]


def rows_after(view: BookingSummaries, event_batches: list[list[Any]]) -> list[dict[str, Any]]:
    """The table after processing `event_batches` from an empty view."""
    view.reset(("booking",))
    projection = BookingSummaryProjection(view=view)
    for batch in event_batches:
        projection.process_batch(batch)
    assert view.max_tracking_id("booking") == event_batches[-1][-1][1].notification_id  # type: ignore[attr-defined]
    return view.fetch_all("SELECT * FROM booking_summaries ORDER BY booking_id")


def one_at_a_time(log: list[Any]) -> list[list[Any]]:
    return [[logged] for logged in log]


def test_a_request_its_updates_and_a_revocation_in_one_batch(view: BookingSummaries) -> None:
    booking = booking_after(
        [("accept", None), ("consent", True), ("status", Status.COMPLETED), ("upload", True), ("consent", False)]
    )
    log = log_of(list(booking.collect_events()))

    [row] = rows_after(view, [log])
    assert row["certificate"] is None  # withdrawing consent revoked the certificate with results
    assert BookingOut.of_row(row).model_dump(mode="json") == BookingOut.of(booking).model_dump(mode="json")
    assert rows_after(view, one_at_a_time(log)) == [row]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_cut_into_batches_gives_the_rows_of_one_event_at_a_time(
    view: BookingSummaries, data: st.DataObject
) -> None:
    history = data.draw(histories())
    cut = data.draw(batches(history.log))

    rows = rows_after(view, cut)
    assert rows == rows_after(view, one_at_a_time(history.log))
    by_id = {str(booking.id): booking for booking in history.bookings}
    assert sorted(row["booking_id"] for row in rows) == sorted(by_id)
    for row in rows:
        expected = BookingOut.of(by_id[row["booking_id"]])
        assert BookingOut.of_row(row).model_dump(mode="json") == expected.model_dump(mode="json")
