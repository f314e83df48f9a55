"""Projection lag: time from an event's commit to its position in the view's tracking table.

A thread polls, in one statement (one snapshot), the head of the events table and the view's
tracked position. An event's commit time is when the head first reached it; it is visible when
the tracked position first reached it. Each poll's new events share one commit time, and each
event counts once, so percentiles are over events. Resolution: the poll interval (~1 ms).
"""

from __future__ import annotations

import threading
import time
from collections import deque

import psycopg

from tests.bench.stats import Samples


class LagProbe:
    def __init__(self, database_url: str, events_table: str, tracking_table: str, application_name: str) -> None:
        self._url = database_url
        self._query = (
            f"SELECT (SELECT max(notification_id) FROM {events_table}) AS head, "
            f"(SELECT max(notification_id) FROM {tracking_table} WHERE application_name = %s) AS tracked"
        )
        self._application_name = application_name
        self._stop = threading.Event()
        self._lags_ms: list[float] = []
        self._thread = threading.Thread(target=self._poll, name="lag-probe", daemon=True)

    def __enter__(self) -> LagProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def samples(self) -> Samples:
        return Samples(self._lags_ms)

    def _poll(self) -> None:
        committed: deque[tuple[int, int, float]] = deque()  # (first id, last id, first seen)
        with psycopg.connect(self._url, autocommit=True) as conn:
            seen_head = self._read(conn)[0]
            while not self._stop.is_set():
                head, tracked = self._read(conn)
                now = time.perf_counter()
                if head > seen_head:
                    committed.append((seen_head + 1, head, now))
                    seen_head = head
                while committed and tracked >= committed[0][0]:
                    first, last, seen = committed.popleft()
                    visible = min(last, tracked)
                    self._lags_ms.extend([(now - seen) * 1000] * (visible - first + 1))
                    if visible < last:
                        committed.appendleft((visible + 1, last, seen))
                time.sleep(0.001)

    def _read(self, conn: psycopg.Connection[tuple[int | None, int | None]]) -> tuple[int, int]:
        row = conn.execute(self._query, (self._application_name,), prepare=True).fetchone()
        assert row is not None
        return row[0] or 0, row[1] or 0
