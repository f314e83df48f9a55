"""`projections`: operate the read models of every service (settings from the environment).

    projections list [--json]            every projection: position, upstream position, lag
    projections rebuild NAME [--timeout S]
                                         empty NAME's view and replay every event; the services keep
                                         serving (their runners of NAME notice and replay, or this does)
    projections migrate                  create every table (event stores, views, stores): the deploy Job
    projections run NAME                 run NAME's runners in the foreground until SIGTERM/SIGINT

A service takes part by defining, in its `services.<name>.main` module, `PROJECTIONS` (a list of
ProjectionSpec) and optionally `APPLICATIONS` (event-sourced applications beyond the upstreams of
its projections) and `STORES` (`(SqlStore subclass, name)` pairs beyond `<name>_idempotency`).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from eventsourcing.application import Application
from eventsourcing.persistence import ApplicationRecorder

from shared.feed import (
    ProjectionPosition,
    ProjectionSpec,
    SupervisedProjection,
    open_event_recorder,
    open_view,
    projection_positions,
)
from shared.http import configure_logging
from shared.idempotency import IdempotencyStore
from shared.settings import ServiceSettings, load_settings
from shared.views import SqlStore, open_store
from shared.worker import run_workers

SERVICES = ("booking", "certificate", "notifier")
PROGRESS_INTERVAL_S = 0.2


@dataclass
class ServiceParts:
    """What one service keeps in the database."""

    service: str
    projections: list[ProjectionSpec] = field(default_factory=list)
    applications: list[type[Application[Any]]] = field(default_factory=list)
    stores: list[tuple[type[SqlStore], str]] = field(default_factory=list)


def service_parts(services: Sequence[str] = SERVICES) -> list[ServiceParts]:
    """Imported lazily; a service whose main module does not exist yet is skipped."""
    found = []
    for service in services:
        module_name = f"services.{service}.main"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        projections = list(getattr(module, "PROJECTIONS", []))
        applications = list(getattr(module, "APPLICATIONS", []))
        applications += [spec.upstream for spec in projections if spec.upstream not in applications]
        stores = [(IdempotencyStore, f"{service}_idempotency"), *getattr(module, "STORES", [])]
        found.append(ServiceParts(service, projections, applications, stores))
    return found


def all_projections(parts: Sequence[ServiceParts]) -> list[ProjectionSpec]:
    """Every projection spec once (two services may list the same one)."""
    specs: dict[str, ProjectionSpec] = {}
    for service in parts:
        for spec in service.projections:
            specs.setdefault(spec.lease_name, spec)
    return list(specs.values())


def projections_named(name: str, specs: Sequence[ProjectionSpec]) -> list[ProjectionSpec]:
    named = [spec for spec in specs if spec.name == name]
    if not named:
        known = ", ".join(sorted({spec.name for spec in specs})) or "none"
        raise SystemExit(f"unknown projection {name!r}; known: {known}")
    return named


@contextmanager
def opened(
    settings: ServiceSettings, specs: Sequence[ProjectionSpec]
) -> Iterator[tuple[dict[str, Any], dict[str, ApplicationRecorder]]]:
    """The views (by projection name) and upstream recorders (by application name) of `specs`."""
    views: dict[str, Any] = {}
    recorders: dict[str, ApplicationRecorder] = {}
    try:
        for spec in specs:
            if spec.name not in views:
                views[spec.name] = open_view(settings, spec, small_pool=True)
            if spec.upstream.name not in recorders:
                recorders[spec.upstream.name] = open_event_recorder(settings, spec.upstream)
        yield views, recorders
    finally:
        for holder in (*views.values(), *recorders.values()):
            holder.datastore.close()


def list_positions(settings: ServiceSettings, specs: Sequence[ProjectionSpec]) -> list[ProjectionPosition]:
    with opened(settings, specs) as (views, recorders):
        return projection_positions(specs, views, recorders)


def rebuild(
    settings: ServiceSettings,
    specs: Sequence[ProjectionSpec],
    *,
    timeout_s: float | None = None,
    progress: TextIO | None = None,
) -> list[ProjectionPosition]:
    """Resets the view of `specs` (one projection, all its upstreams) and waits until it has caught
    up with every event that existed at the reset. Whoever holds each lease replays: a service's
    runner restarts when it sees the reset; otherwise the runner started here takes the lease."""
    # What exists by now outlives the replay: out of the collector's sight meanwhile, so that the
    # full collections a replay triggers every few thousand events do not walk it each time (as
    # in worker processes, shared/worker.py).
    gc.freeze()
    try:
        return _replay(settings, specs, timeout_s, progress)
    finally:
        gc.unfreeze()


def _replay(
    settings: ServiceSettings, specs: Sequence[ProjectionSpec], timeout_s: float | None, progress: TextIO | None
) -> list[ProjectionPosition]:
    name = specs[0].name
    with opened(settings, specs) as (views, recorders):
        views[name].reset(tuple(recorders))
        targets = {upstream: recorder.max_notification_id() or 0 for upstream, recorder in recorders.items()}
        runners = [SupervisedProjection(settings, spec).start() for spec in specs]
        total = sum(targets.values())
        report = Progress(progress or sys.stderr, f"rebuild {name}", total)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while True:
                # Only the view's positions: the targets are fixed, and this polls beside the runner.
                done = sum(
                    min(views[name].max_tracking_id(upstream) or 0, target) for upstream, target in targets.items()
                )
                report.show(done)
                if done >= total:
                    report.done()
                    return projection_positions(specs, views, recorders)
                if deadline is not None and time.monotonic() > deadline:
                    raise SystemExit(f"rebuild of {name} did not catch up within {timeout_s} s")
                time.sleep(PROGRESS_INTERVAL_S)
        finally:
            for runner in runners:
                runner.stop()


class Progress:
    """A progress line on stderr: redrawn in place on a terminal, a line every few seconds otherwise."""

    def __init__(self, stream: TextIO, label: str, total: int, every_s: float = 2.0) -> None:
        self._stream = stream
        self._label = label
        self._total = total
        self._every_s = every_s
        self._last = 0.0
        self._shown: int | None = None
        self._in_place = stream.isatty()

    def show(self, done: int) -> None:
        now = time.monotonic()
        if done == self._shown or (not self._in_place and now - self._last < self._every_s):
            return
        self._last = now
        self._shown = done
        percent = 100 if self._total == 0 else done * 100 // self._total
        line = f"{self._label}: {done}/{self._total} events ({percent}%)"
        self._stream.write(f"\r{line}" if self._in_place else f"{line}\n")
        self._stream.flush()

    def done(self) -> None:
        self._last = 0.0
        self.show(self._total)
        if self._in_place:
            self._stream.write("\n")


def migrate(settings: ServiceSettings, parts: Sequence[ServiceParts], out: TextIO | None = None) -> None:
    """Creates every table; safe to run again (everything is CREATE ... IF NOT EXISTS)."""
    out = out or sys.stdout
    done: set[str] = set()
    for service in parts:
        for application in service.applications:
            if application.name not in done:
                open_event_recorder(settings, application).datastore.close()  # type: ignore[attr-defined]
                done.add(application.name)
        for spec in service.projections:
            if spec.name not in done:
                open_view(settings, spec, small_pool=True).datastore.close()
                done.add(spec.name)
        for store, store_name in service.stores:
            if store_name not in done:
                open_store(settings, store, store_name).datastore.close()
                done.add(store_name)
        out.write(f"{service.service}: tables ready\n")


def print_positions(positions: Sequence[ProjectionPosition], out: TextIO, *, as_json: bool) -> None:
    if as_json:
        out.write(json.dumps([{**asdict(p), "lag": p.lag} for p in positions], indent=2) + "\n")
        return
    rows = [("PROJECTION", "UPSTREAM", "POSITION", "UPSTREAM_MAX", "LAG")]
    rows += [(p.projection, p.upstream, str(p.position), str(p.upstream_max), str(p.lag)) for p in positions]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="projections", description="Operate the read models of every service.")
    commands = root.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="every projection with its position and lag")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    rebuilding = commands.add_parser("rebuild", help="empty a projection's view and replay every event")
    rebuilding.add_argument("name")
    rebuilding.add_argument("--timeout", type=float, default=None, help="seconds to wait for catching up")
    commands.add_parser("migrate", help="create every table of every service")
    running = commands.add_parser("run", help="run one projection in the foreground")
    running.add_argument("name")
    return root


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    settings = load_settings(ServiceSettings)
    configure_logging(settings.log_level, settings.log_format)
    parts = service_parts()
    specs = all_projections(parts)
    if args.command == "list":
        print_positions(list_positions(settings, specs), sys.stdout, as_json=args.json)
    elif args.command == "rebuild":
        positions = rebuild(settings, projections_named(args.name, specs), timeout_s=args.timeout)
        print_positions(positions, sys.stdout, as_json=False)
    elif args.command == "migrate":
        migrate(settings, parts)
    elif args.command == "run":
        run_workers(settings, projections_named(args.name, specs))


if __name__ == "__main__":
    main()
