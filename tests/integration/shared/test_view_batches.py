"""A view's batch is one transaction with its position: all of it or nothing, exactly once, and
never after a reset that the runner has not seen."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError, Tracking

from services.booking.application import BookingApplication
from services.booking.settings import BookingSettings
from shared.feed import BatchProjection, ProjectionSpec, open_view
from shared.views import BULK_ROWS, SqlView, StaleView


class Notes(SqlView):
    tables = (
        "CREATE TABLE IF NOT EXISTS notes (note TEXT PRIMARY KEY)",
        "CREATE TABLE IF NOT EXISTS note_lines (id {serial}, line TEXT, position BIGINT NOT NULL)",
    )
    table_names = ("notes", "note_lines")

    def add(self, tracking: Tracking, note: str) -> None:
        self.record(tracking, lambda cursor: self.insert_rows(cursor, "notes", [{"note": note}]))

    def notes(self) -> list[str]:
        return [row["note"] for row in self.fetch_all("SELECT note FROM notes ORDER BY note")]


class NoteProjection(BatchProjection[Notes]):
    """Event by event (the default batch): each event is a note; "boom" fails."""

    name = "notes"

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        if domain_event == "boom":
            raise RuntimeError("boom")
        self.view.add(tracking, domain_event)


NOTES = ProjectionSpec(NoteProjection, Notes, BookingApplication)


@pytest.fixture
def settings(service_env: dict[str, Any]) -> BookingSettings:
    return BookingSettings(**service_env, run_workers=False)


@pytest.fixture
def notes(settings: BookingSettings) -> Iterator[Notes]:
    view = open_view(settings, NOTES)
    yield view
    view.datastore.close()  # type: ignore[attr-defined]


def at(*positions: int) -> list[tuple[str, Tracking]]:
    return [(f"note {n}", Tracking("booking", n)) for n in positions]


def position(notes: Notes) -> int | None:
    return notes.max_tracking_id("booking")  # type: ignore[attr-defined,no-any-return]


def test_a_batch_commits_with_its_last_position_or_not_at_all(notes: Notes) -> None:
    projection = NoteProjection(view=notes)
    projection.process_batch(at(1, 2, 3))
    assert (notes.notes(), position(notes)) == (["note 1", "note 2", "note 3"], 3)

    with pytest.raises(RuntimeError):
        projection.process_batch([*at(4), ("boom", Tracking("booking", 5)), *at(6)])
    assert (notes.notes(), position(notes)) == (["note 1", "note 2", "note 3"], 3)


def test_a_position_already_recorded_is_not_recorded_twice(notes: Notes) -> None:
    projection = NoteProjection(view=notes)
    projection.process_batch(at(1, 2))
    with pytest.raises(IntegrityError):
        projection.process_batch(at(2))
    with pytest.raises(IntegrityError):
        notes.add(Tracking("booking", 1), "again")
    assert notes.notes() == ["note 1", "note 2"]


def test_a_runner_that_started_before_a_reset_cannot_write_after_it(settings: BookingSettings, notes: Notes) -> None:
    notes.expected_epoch = notes.epoch()
    NoteProjection(view=notes).process_batch(at(1))

    rebuilding = open_view(settings, NOTES)
    try:
        rebuilding.reset(("booking",))
    finally:
        rebuilding.datastore.close()

    with pytest.raises(StaleView):
        NoteProjection(view=notes).process_batch(at(2))
    assert (notes.notes(), position(notes)) == ([], None)


def test_a_bulk_batch_inserts_its_rows_as_given_in_their_order_or_not_at_all(notes: Notes) -> None:
    # On PostgreSQL by COPY: what its text format escapes must come back as it was.
    lines = [
        {"line": None if n % 7 == 0 else f"tab\t newline\n back\\slash \\N é {n}", "position": n}
        for n in range(BULK_ROWS)
    ]
    with notes.batch(Tracking("booking", 1), bulk=True) as cursor:
        notes.insert_rows(cursor, "note_lines", lines)
    assert notes.fetch_all("SELECT line, position FROM note_lines ORDER BY id") == lines

    with pytest.raises(RuntimeError), notes.batch(Tracking("booking", 2), bulk=True) as cursor:
        notes.insert_rows(cursor, "note_lines", lines)
        raise RuntimeError("boom")
    assert (len(notes.fetch_all("SELECT line FROM note_lines")), position(notes)) == (BULK_ROWS, 1)
