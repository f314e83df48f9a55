"""Rebuild speed of the booking read models, and the bare reads it is compared with.

Run as a process: `python -m tests.bench.rebuild SPEC.json` (spec: database_url, timeout).
The rebuild is what an operator runs (`projections rebuild NAME`, one read model at a time):
reset the view, then the supervised projection (the worker's code) replays every stored event.
Baselines read the same events in the subscription's page size: rows only (`select_notifications`),
and rows decoded into domain events by the library's mapper.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from services.booking.application import BookingApplication
from services.booking.main import PROJECTIONS
from services.booking.settings import BookingSettings
from shared.eventstore import eventsourcing_env
from shared.projection_cli import projections_named, rebuild

PAGE = 500  # the library subscription's page size


def read_all(app: BookingApplication, *, decode: bool) -> tuple[int, float]:
    """Reads every notification in pages; returns (count, seconds)."""
    count, last = 0, 0
    started = time.perf_counter()
    while page := app.recorder.select_notifications(start=last, limit=PAGE, inclusive_of_start=False):
        if decode:
            for notification in page:
                app.mapper.to_domain_event(notification)
        count += len(page)
        last = page[-1].id
    return count, time.perf_counter() - started


def rebuild_each(settings: BookingSettings, timeout: float) -> dict[str, float]:
    """Rebuilds every booking read model in turn, as `projections rebuild NAME` does; seconds by name."""
    seconds = {}
    for name in dict.fromkeys(spec.name for spec in PROJECTIONS):
        started = time.perf_counter()
        rebuild(settings, projections_named(name, PROJECTIONS), timeout_s=timeout, progress=io.StringIO())
        seconds[name] = time.perf_counter() - started
    return seconds


def main() -> None:
    spec: dict[str, Any] = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    settings = BookingSettings(
        database_url=spec["database_url"], auth_secret="bench", data_dir=Path(tempfile.gettempdir())
    )
    app = BookingApplication(env=eventsourcing_env(settings, BookingApplication.name))
    rows, rows_s = read_all(app, decode=False)
    decoded, decoded_s = read_all(app, decode=True)
    app.close()
    json.dump(
        {
            "events": rows,
            "rebuild_s": rebuild_each(settings, spec["timeout"]),
            "read_s": rows_s,
            "read_decode_s": decoded_s,
            "decoded": decoded,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
