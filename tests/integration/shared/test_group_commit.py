"""Group commit on PostgreSQL: saves that queue behind a commit share the next one, and each
caller still gets its own notification ids, or its own IntegrityError."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import InfrastructureFactory, IntegrityError, StoredEvent
from eventsourcing.utils import Environment

from shared.eventstore import eventsourcing_env
from shared.postgres_store import GroupCommitApplicationRecorder
from shared.settings import ServiceSettings

pytestmark = pytest.mark.postgres


@pytest.fixture
def recorder(postgres_url: str, tmp_path: Path) -> Iterator[GroupCommitApplicationRecorder]:
    settings = ServiceSettings(database_url=postgres_url, data_dir=tmp_path)
    factory = InfrastructureFactory.construct(env=Environment("grouped", eventsourcing_env(settings, "grouped")))
    recorder = factory.application_recorder()
    assert isinstance(recorder, GroupCommitApplicationRecorder)
    yield recorder
    factory.close()


def events_of(originator_id: UUID, *versions: int) -> list[StoredEvent]:
    return [StoredEvent(originator_id, v, "tests:Event", f'{{"v": {v}}}'.encode()) for v in versions]


class Counter(Aggregate):
    def __init__(self, name: str) -> None:
        self.name = name


class Counters(Application[UUID]):
    name = "grouped"


def run_while_commit_in_flight(recorder: GroupCommitApplicationRecorder, calls: list[Callable[[], Any]]) -> list[Any]:
    """Holds the commit back until every call has queued its save, so that one commit takes them all;
    returns each call's result or exception."""
    outcomes: list[Any] = [None] * len(calls)

    def call(index: int) -> None:
        try:
            outcomes[index] = calls[index]()
        except Exception as error:  # the outcome under test
            outcomes[index] = error

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
    with recorder._commit_lock:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while len(recorder._queue) < len(calls):
            assert time.monotonic() < deadline, "the saves did not queue"
            time.sleep(0.005)
    for thread in threads:
        thread.join()
    return outcomes


def save_in_one_batch(
    recorder: GroupCommitApplicationRecorder, saves: list[list[StoredEvent]]
) -> list[list[int] | Exception]:
    return run_while_commit_in_flight(
        recorder, [lambda events=events: list(recorder.insert_events(events) or []) for events in saves]
    )


def transactions_that_wrote(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(DISTINCT xmin::text) FROM grouped_events").fetchone()
    assert row is not None
    return int(row[0])


def stored_by_position(url: str) -> dict[int, tuple[UUID, int]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT notification_id, originator_id, originator_version FROM grouped_events").fetchall()
    return {position: (originator, version) for position, originator, version in rows}


def test_queued_saves_share_one_commit_and_keep_their_ids(
    recorder: GroupCommitApplicationRecorder, postgres_url: str
) -> None:
    saves = [events_of(uuid4(), 1, 2) for _ in range(6)]
    outcomes = save_in_one_batch(recorder, saves)

    assert transactions_that_wrote(postgres_url) == 1
    stored = stored_by_position(postgres_url)
    for events, ids in zip(saves, outcomes, strict=True):
        assert isinstance(ids, list)
        assert [stored[i] for i in ids] == [(e.originator_id, e.originator_version) for e in events]


def test_a_conflict_fails_only_the_conflicting_save(
    recorder: GroupCommitApplicationRecorder, postgres_url: str
) -> None:
    contested = uuid4()
    saves = [events_of(uuid4(), 1), events_of(contested, 1), events_of(contested, 1), events_of(uuid4(), 1, 2)]
    outcomes = save_in_one_batch(recorder, saves)

    failed = [o for o in outcomes if isinstance(o, Exception)]
    assert len(failed) == 1
    assert isinstance(failed[0], IntegrityError)
    stored = stored_by_position(postgres_url)
    assert sorted(stored.values()) == sorted(
        (e.originator_id, e.originator_version) for s in (saves[0], saves[1], saves[3]) for e in s
    )
    for events, ids in zip(saves, outcomes, strict=True):
        if isinstance(ids, list):
            assert [stored[i] for i in ids] == [(e.originator_id, e.originator_version) for e in events]


def test_application_saves_are_grouped(postgres_url: str, tmp_path: Path) -> None:
    """Through the library's application (which passes tracking=None to the recorder)."""
    settings = ServiceSettings(database_url=postgres_url, data_dir=tmp_path)
    app = Counters(env=eventsourcing_env(settings, Counters.name))
    try:
        assert isinstance(app.recorder, GroupCommitApplicationRecorder)
        counters = [Counter(f"c{n}") for n in range(5)]
        outcomes = run_while_commit_in_flight(app.recorder, [lambda c=c: app.save(c) for c in counters])
        assert all(not isinstance(o, Exception) for o in outcomes), outcomes
        assert [app.repository.get(c.id).name for c in counters] == [c.name for c in counters]
        assert transactions_that_wrote(postgres_url) == 1
    finally:
        app.close()


def end_every_other_session(url: str) -> int:
    """What a server restart does to a pool: every connection it holds is dead."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


def test_calls_survive_the_server_ending_every_pooled_connection(postgres_url: str, tmp_path: Path) -> None:
    """No pre-ping: a call that finds its connection dead drops every dead one and runs again."""
    settings = ServiceSettings(database_url=postgres_url, data_dir=tmp_path)
    app = Counters(env=eventsourcing_env(settings, Counters.name, pre_ping=False))
    try:
        saved = Counter("saved")
        app.save(saved)
        for call in (
            lambda: app.repository.get(saved.id).name,
            lambda: app.save(Counter("inserted"))[0].notification.id,
            app.recorder.max_notification_id,
        ):
            assert end_every_other_session(postgres_url) >= 1
            assert call() in ("saved", 2)
    finally:
        app.close()


def test_a_save_without_events_does_not_touch_the_database(recorder: GroupCommitApplicationRecorder) -> None:
    """A command that changed nothing (e.g. a status set to what it is) costs no transaction."""
    pool = recorder.datastore.pool
    before = pool.get_stats().get("requests_num", 0)
    assert recorder.insert_events([]) == []
    assert pool.get_stats().get("requests_num", 0) == before
