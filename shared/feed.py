"""Event-feed plumbing: run a projection after an upstream application, supervised.

The library's ProjectionRunner does the work (subscription + tracking = exactly once).
Around it: a lease so that exactly one copy of a projection is active (PostgreSQL advisory
lock, or a file lock in embedded mode), and a supervisor that restarts the runner when the
subscription dies (for instance a cut LISTEN connection) instead of letting the worker stop.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from eventsourcing.application import Application
from eventsourcing.projection import Projection, ProjectionRunner

from shared.eventstore import eventsourcing_env
from shared.settings import ServiceSettings
from shared.views import SqlView, view_class_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProjectionSpec:
    """A projection, the view it writes and the application whose events it follows."""

    projection: type[Projection[Any]]
    view: type[SqlView]
    upstream: type[Application[Any]]

    @property
    def name(self) -> str:
        return self.projection.name


def open_view(settings: ServiceSettings, spec: ProjectionSpec) -> Any:
    """The view of a projection, for queries (tables are created when missing)."""
    from eventsourcing.persistence import InfrastructureFactory
    from eventsourcing.utils import Environment

    env = Environment(spec.name, eventsourcing_env(settings, spec.name))
    return InfrastructureFactory.construct(env=env).tracking_recorder(view_class_for(settings, spec.view))


class Lease:
    """Exactly one active consumer per projection: held while the runner runs."""

    def __init__(self, settings: ServiceSettings, name: str) -> None:
        self._settings = settings
        self._name = name

    @contextmanager
    def hold(self, stop: threading.Event) -> Iterator[Any]:
        """Blocks until the lease is ours (or `stop` is set); yields a liveness check."""
        if self._settings.uses_postgres:
            with self._advisory_lock(stop) as alive:
                yield alive
        else:
            with self._file_lock(stop) as alive:
                yield alive

    @contextmanager
    def _advisory_lock(self, stop: threading.Event) -> Iterator[Any]:
        key = int.from_bytes(hashlib.sha256(f"projection:{self._name}".encode()).digest()[:8], "big", signed=True)
        with psycopg.connect(self._settings.database_url, autocommit=True, connect_timeout=5) as conn:
            while not stop.is_set():
                if conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:  # type: ignore[index]
                    break
                stop.wait(1.0)
            else:
                yield lambda: False
                return

            def alive() -> bool:
                try:
                    conn.execute("SELECT 1")
                except psycopg.Error:
                    return False
                return True

            yield alive

    @contextmanager
    def _file_lock(self, stop: threading.Event) -> Iterator[Any]:
        path = Path(self._settings.sqlite_dir) / f"{self._name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as handle:
            while not stop.is_set():
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    stop.wait(0.5)
            else:
                yield lambda: False
                return
            try:
                yield lambda: True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


class SupervisedProjection:
    """Keeps one projection running in a background thread until stopped."""

    def __init__(self, settings: ServiceSettings, spec: ProjectionSpec, *, restart_delay_s: float = 1.0) -> None:
        self.settings = settings
        self.spec = spec
        self._restart_delay_s = restart_delay_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.restarts = 0
        self.running = threading.Event()

    def start(self) -> SupervisedProjection:
        self._thread = threading.Thread(target=self._supervise, name=f"projection-{self.spec.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_until_stopped(self) -> None:
        """For worker processes: supervise in the calling thread."""
        self._supervise()

    def request_stop(self) -> None:
        self._stop.set()

    def _supervise(self) -> None:
        env = eventsourcing_env(self.settings, self.spec.upstream.name, self.spec.name)
        lease = Lease(self.settings, self.spec.name)
        while not self._stop.is_set():
            try:
                with lease.hold(self._stop) as alive:
                    if self._stop.is_set():
                        return
                    self._run_once(env, alive)
            except Exception:  # the runner re-raises whatever stopped its thread: log, back off, restart
                log.exception("projection %s stopped; restarting", self.spec.name)
            self.running.clear()
            if not self._stop.is_set():
                self.restarts += 1
                self._stop.wait(self._restart_delay_s)

    def _run_once(self, env: dict[str, str], alive: Any) -> None:
        with ProjectionRunner(
            application_class=self.spec.upstream,
            projection_class=self.spec.projection,
            view_class=view_class_for(self.settings, self.spec.view),
            env=env,
        ) as runner:
            try:
                self.running.set()
                while not self._stop.is_set():
                    runner.run_forever(timeout=1.0)
                    if runner.is_interrupted.is_set() or not alive():
                        msg = f"projection {self.spec.name} lost its subscription or lease"
                        raise RuntimeError(msg)
            finally:
                runner.view.datastore.close()


def wait_for_position(view: Any, application_name: str, position: int | None, timeout: float) -> bool:
    """Read-your-writes: True once the view has processed `position`, False on timeout."""
    if position is None:
        return True
    try:
        view.wait(application_name, position, timeout=timeout)
    except TimeoutError:
        return False
    return True


def lag(view: Any, upstream_max: int | None, application_name: str) -> int:
    """How many notifications the view is behind the upstream application."""
    return max(0, (upstream_max or 0) - (view.max_tracking_id(application_name) or 0))
