"""Event-feed plumbing: run a projection after an upstream application, supervised.

The library's projection runner does the work (subscription + tracking = exactly once).
Around it: a lease so that exactly one copy of a projection is active per upstream (PostgreSQL
advisory lock, or a file lock in embedded mode), and a supervisor that restarts the runner when
the subscription dies (for instance a cut LISTEN connection) or the view is reset for a rebuild,
instead of letting the worker stop. Positions and lag for operators and Prometheus.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from eventsourcing.application import Application
from eventsourcing.persistence import ApplicationRecorder, InfrastructureFactory, Tracking
from eventsourcing.projection import ApplicationSubscription, BaseProjectionRunner, Projection
from eventsourcing.utils import Environment
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.errors import Invalid, ServiceUnavailable
from shared.eventstore import eventsourcing_env
from shared.http import MIN_POSITION_HEADER, POSITION_HEADER
from shared.settings import ServiceSettings
from shared.views import SqlView, StaleView, view_class_for

log = logging.getLogger(__name__)

SqlViewT = TypeVar("SqlViewT", bound=SqlView)
ItemT = TypeVar("ItemT")

TABLE_CREATION_LOCK = threading.Lock()
"""Held around whatever may create tables in a worker process (opening a view, constructing a
runner): runners starting together create the same tables and functions (IF NOT EXISTS), and on
PostgreSQL concurrent DDL fails ("tuple concurrently updated"), so they take turns."""

EventBatch = Sequence[tuple[Any, Tracking]]
"""Events with their positions, in notification order, as a runner hands them to a projection."""


class BatchProjection(Projection[SqlViewT]):
    """A projection into a SqlView that may process the events fetched together as one set.

    The runner calls `process_batch` with what its subscription has already fetched (up to
    MAX_BATCH_EVENTS): a view can then read the rows the batch touches in one statement, fold the
    events into them in memory and write them back in one statement, with the batch's position,
    in one transaction.
    """

    def process_batch(self, events: EventBatch) -> None:
        """Processes `events` and records the last one's position, atomically. By default event by
        event (`process_event`), in one transaction."""
        process_one_by_one(self, events)


def process_one_by_one(projection: Projection[Any], events: EventBatch) -> None:
    """`events` through the projection's `process_event`, in one transaction of its SqlView."""
    with projection.view.batch(events[-1][1]):
        for domain_event, tracking in events:
            projection.process_event(domain_event, tracking)


@dataclass(frozen=True)
class ProjectionSpec:
    """A projection, the view it writes and the application whose events it follows."""

    projection: type[Projection[Any]]
    view: type[SqlView]
    upstream: type[Application[Any]]

    @property
    def name(self) -> str:
        return self.projection.name

    @property
    def lease_name(self) -> str:
        """One active consumer per projection and upstream: a projection may follow several upstreams
        into one view (the tracking table keeps a position per upstream)."""
        return f"{self.projection.name}.{self.upstream.name}"


# A PostgreSQL pool keeps its minimum size open: runners and monitors work one statement at a time
# (plus a LISTEN connection), so they get the smallest pool; servers count connections.
SMALL_POOL = {"POSTGRES_POOL_SIZE": "1", "POSTGRES_MAX_OVERFLOW": "2"}

# A runner's pools also skip the round trip that checks a pooled connection before each use: it
# would be on the path of every event. A dead connection fails the runner, and the supervisor
# restarts it with new pools.
RUNNER_POOL = SMALL_POOL | {"POSTGRES_PRE_PING": "n"}


def open_view(settings: ServiceSettings, spec: ProjectionSpec, *, small_pool: bool = False) -> Any:
    """The view of a projection, for queries (tables are created when missing)."""
    return _open_view(settings, spec, SMALL_POOL if small_pool else {})


def _open_view(settings: ServiceSettings, spec: ProjectionSpec, pool: Mapping[str, str]) -> Any:
    env = Environment(spec.name, eventsourcing_env(settings, spec.name) | pool)
    return InfrastructureFactory.construct(env=env).tracking_recorder(view_class_for(settings, spec.view))


def open_event_recorder(settings: ServiceSettings, application: type[Application[Any]]) -> ApplicationRecorder:
    """The event recorder of an application (tables created when missing), without building the application."""
    env = Environment(application.name, eventsourcing_env(settings, application.name) | SMALL_POOL)
    return InfrastructureFactory.construct(env=env).application_recorder()


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
    """Keeps one projection running in a background thread until stopped.

    `run_once` is the extension point: it runs while the lease is held, and whatever it raises
    (or a reset of the view) makes the supervisor wait `restart_delay_s` and run it again.
    """

    def __init__(self, settings: ServiceSettings, spec: ProjectionSpec, *, restart_delay_s: float = 1.0) -> None:
        self.settings = settings
        self.spec = spec
        self._restart_delay_s = restart_delay_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.restarts = 0
        self.running = threading.Event()
        self._runner: BaseProjectionRunner[Any] | None = None

    @property
    def stop_requested(self) -> threading.Event:
        """Set once a stop was requested: `run_once` then returns soon (it may wait on this event)."""
        return self._stop

    def start(self) -> SupervisedProjection:
        self._thread = threading.Thread(target=self._supervise, name=f"projection-{self.spec.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_until_stopped(self) -> None:
        """For worker processes: supervise in the calling thread."""
        self._supervise()

    def request_stop(self) -> None:
        self._stop.set()
        runner = self._runner
        if runner is not None:
            runner.stop()  # wakes run_forever() at once instead of at its next timeout

    def _supervise(self) -> None:
        env = eventsourcing_env(self.settings, self.spec.upstream.name, self.spec.name) | RUNNER_POOL
        lease = Lease(self.settings, self.spec.lease_name)
        while not self._stop.is_set():
            try:
                with lease.hold(self._stop) as alive:
                    if self._stop.is_set():
                        return
                    # Operators see which copy is the active consumer (the others wait for the lease).
                    log.info("projection %s holds its lease; running", self.spec.lease_name)
                    self.run_once(env, alive)
            except StaleView:
                log.info("projection %s was reset; replaying from the start", self.spec.lease_name)
            except Exception:  # the runner re-raises whatever stopped its thread: log, back off, restart
                log.exception("projection %s stopped; restarting", self.spec.lease_name)
            self.running.clear()
            if not self._stop.is_set():
                self.restarts += 1
                self._stop.wait(self._restart_delay_s)

    def run_once(self, env: dict[str, str], alive: Callable[[], bool]) -> None:
        """Runs the projection until a stop is requested; raises when it must restart.

        Called with the lease held, `env` (the library environment of the upstream and the view)
        and `alive` (False once the lease is lost). Set `running` once running; take
        TABLE_CREATION_LOCK around whatever may create tables. Subclasses may run something else
        under the same lease and supervision (the notifier runs its process and sender).
        """
        with TABLE_CREATION_LOCK:
            view = _open_view(self.settings, self.spec, RUNNER_POOL)
        try:
            # Read before the runner reads its start position: a reset after this makes every write fail.
            view.expected_epoch = view.epoch()
            projection = self.spec.projection(view=view)
            with TABLE_CREATION_LOCK:
                runner = BatchingProjectionRunner(
                    projection=projection,
                    application_class=self.spec.upstream,
                    tracking_recorder=view,
                    topics=projection.topics,
                    env=env,
                )
            self._runner = runner
            with runner:
                self.running.set()
                while not self._stop.is_set():
                    runner.run_forever(timeout=1.0)
                    if self._stop.is_set():
                        break
                    if runner.is_interrupted.is_set() or not alive():
                        msg = f"projection {self.spec.lease_name} lost its subscription or lease"
                        raise RuntimeError(msg)
                    if view.epoch() != view.expected_epoch:
                        msg = "the view was reset (a rebuild began)"
                        raise StaleView(msg)
        finally:
            self._runner = None
            view.datastore.close()


MAX_BATCH_EVENTS = 2000
"""Events of one view transaction at most: a rebuild commits about once per four subscription
pages; a batch's costs (round trips, its position) then weigh little beside its events'
(measured: 1 us per event less on the server than with batches of 500)."""

AHEAD_BATCHES = 2
"""Batches decoded ahead of the projection at most (DecodedAhead)."""


class BatchingProjectionRunner(BaseProjectionRunner[Any]):
    """The library's runner, except that the events already fetched are processed together.

    One transaction per event waits for one WAL flush per event, and one statement per event
    costs a round trip and its planning: a rebuild or a burst of commands would go at about one
    event per flush. Here the runner takes the first event (waiting for it if need be), then
    every event that the subscription has already fetched, up to MAX_BATCH_EVENTS, and hands
    them to the projection at once (`BatchProjection.process_batch`), which commits them with the
    last one's position: still exactly once. It waits for no more than is fetched, so a lone
    event is processed as soon as it arrives.
    """

    @staticmethod
    def _process_events_loop(  # type: ignore[override]
        subscription: Any, projection: Any, is_stopping: threading.Event, runner: Any
    ) -> None:
        process = (
            projection.process_batch
            if isinstance(projection, BatchProjection)
            else functools.partial(process_one_by_one, projection)
        )
        batches = DecodedAhead(fetched_batches(subscription))
        try:
            for batch in batches:
                process(batch)
        except BaseException as error:  # handed to the runner, which re-raises it (as the library's loop does)
            owner = runner()
            if owner is not None:
                owner._thread_error = error
        finally:
            batches.close()
            is_stopping.set()


def fetched_batches(subscription: ApplicationSubscription[Any]) -> Iterator[list[tuple[Any, Tracking]]]:
    """The events of an application subscription in batches: the next event (waiting for it),
    then those already fetched, up to MAX_BATCH_EVENTS. Ends when the subscription stops."""
    take_fetched = getattr(subscription.subscription, "take_fetched", None)
    if take_fetched is None:  # not one of ours (shared/subscriptions.py): batches of one
        for event in subscription:
            yield [event]
        return
    # What the library's ApplicationSubscription does for each event, for a whole batch at once.
    to_domain_event, name = subscription.mapper.to_domain_event, subscription.name
    while True:
        try:
            notifications = take_fetched(MAX_BATCH_EVENTS)
        except StopIteration:
            return
        yield [(to_domain_event(notification), Tracking(name, notification.id)) for notification in notifications]


class DecodedAhead(Iterator[list[ItemT]]):
    """The batches of `batches`, taken (so decoded into domain events) in a thread of their own,
    up to AHEAD_BATCHES ahead of the projection: while the projection waits for the database with
    one batch, the next one is decoded. Batches taken meanwhile go together as one, up to
    MAX_BATCH_EVENTS. Order is kept; what `batches` raises comes after what it yielded before.
    """

    def __init__(self, batches: Iterator[list[ItemT]]) -> None:
        self._batches = batches
        self._ready: deque[list[ItemT]] = deque()
        self._changed = threading.Condition()
        self._finished = False  # `batches` has ended (or raised `_error`)
        self._closed = False  # nobody takes batches any more: the thread stops
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._take_ahead, name="decode-ahead", daemon=True)
        self._thread.start()

    def _take_ahead(self) -> None:
        try:
            for batch in self._batches:
                with self._changed:
                    while len(self._ready) >= AHEAD_BATCHES and not self._closed:
                        self._changed.wait()
                    if self._closed:
                        return
                    self._ready.append(batch)
                    self._changed.notify_all()
        except BaseException as error:  # handed to whoever takes the batches, after those before it
            self._error = error
        finally:
            with self._changed:
                self._finished = True
                self._changed.notify_all()

    def __next__(self) -> list[ItemT]:
        with self._changed:
            while not self._ready and not self._finished:
                self._changed.wait()
            if not self._ready:
                self.close()
                if self._error is not None:
                    raise self._error
                raise StopIteration
            batch = self._ready.popleft()
            while self._ready and len(batch) + len(self._ready[0]) <= MAX_BATCH_EVENTS:
                batch += self._ready.popleft()
            self._changed.notify_all()
        return batch

    def close(self) -> None:
        """Stops taking batches ahead (a thread blocked in `batches` stops when its subscription does)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()


def wait_for_position(view: Any, application_name: str, position: int | None, timeout: float) -> bool:
    """Read-your-writes: True once the view has processed `position`, False on timeout."""
    if position is None:
        return True
    try:
        view.wait(application_name, position, timeout=timeout)
    except TimeoutError:
        return False
    return True


def read_your_writes(
    view: Any, upstream_events: ApplicationRecorder, application_name: str, position: int | None, timeout: float
) -> None:
    """Answers a GET with `X-Min-Position` only once `view` has processed that upstream position."""
    if position is None:
        return
    # A position past the last event was never handed out; waiting for it would only time out.
    written = upstream_events.max_notification_id() or 0
    if position > written:
        raise Invalid(
            f"{MIN_POSITION_HEADER} {position} is past the last event ({written}); send back an "
            f"{POSITION_HEADER} that a command returned.",
            code="invalid_min_position",
        )
    if not wait_for_position(view, application_name, position, timeout):
        raise ServiceUnavailable(
            "The read model has not caught up with that position yet; retry shortly.",
            code="read_model_behind",
            headers={"Retry-After": "1"},
        )


@dataclass(frozen=True)
class ProjectionPosition:
    """Where a projection stands in one upstream's notification log.

    Exact for projections that take every topic (ours do: the default handler tracks every event).
    """

    projection: str
    upstream: str
    position: int
    upstream_max: int

    @property
    def lag(self) -> int:
        return max(0, self.upstream_max - self.position)


def projection_positions(
    specs: Iterable[ProjectionSpec], views: Mapping[str, Any], recorders: Mapping[str, ApplicationRecorder]
) -> list[ProjectionPosition]:
    """Positions of `specs`, given their views by projection name and upstream recorders by application name."""
    return [
        ProjectionPosition(
            projection=spec.name,
            upstream=spec.upstream.name,
            position=views[spec.name].max_tracking_id(spec.upstream.name) or 0,
            upstream_max=recorders[spec.upstream.name].max_notification_id() or 0,
        )
        for spec in specs
    ]


class ProjectionLagCollector(Collector):
    """Prometheus gauge `projection_lag_events{projection,upstream}`, measured on each scrape."""

    def __init__(self, read_positions: Callable[[], list[ProjectionPosition]]) -> None:
        self._read_positions = read_positions

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        try:
            positions = self._read_positions()
        except Exception:  # a scrape must still answer when a database is down; readiness reports that
            log.warning("projection lag unavailable", exc_info=True)
            positions = []
        for position in positions:
            family.add_metric([position.projection, position.upstream], position.lag)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "projection_lag_events",
            "Upstream events a projection has not processed yet",
            labels=["projection", "upstream"],
        )
