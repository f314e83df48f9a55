"""The benchmark run: servers up, every figure measured next to its baseline, servers down."""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg

from services.booking.application import BookingApplication
from services.booking.main import PROJECTIONS
from services.booking.settings import BookingSettings
from shared.auth import mint_token
from shared.projection_cli import migrate, service_parts
from tests.bench import seed
from tests.bench.apps import BARE_PATH
from tests.bench.certificates import CertificateBench
from tests.bench.drivers import raw_insert_table_ddl, status_plan
from tests.bench.lag import LagProbe
from tests.bench.loadgen import LoadResult, LoadSpec, RequestSpec
from tests.bench.processes import (
    REPO,
    Server,
    run_json_process,
    run_together,
    start_process,
    start_uvicorn,
)
from tests.bench.report import Figure, Measure, Report
from tests.bench.stats import Samples

AUTH_SECRET = "bench-secret-for-hs256-tokens-0123456789"
SERVER_WORKERS = 2  # one uvicorn worker per core
QUERY_CONNECTIONS = 32
BOOKINGS_PER_CLIENT = 500
CATALOG_SIZE = 100
COMMAND_RATIO_TARGET = 0.5
LAG_P99_TARGET_MS = 100.0
REBUILD_TARGET = 20_000.0
STOCK_LIBRARY = "eventsourcing.postgres"


@dataclass(frozen=True)
class Scale:
    name: str
    bookings: int
    seconds: float
    warmup: float


SCALES = {
    "default": Scale("default", bookings=100_000, seconds=6.0, warmup=2.0),
    "large": Scale("large", bookings=1_000_000, seconds=10.0, warmup=2.0),
}


class Bench:
    """One run against one fresh database."""

    def __init__(self, scale: Scale, database_url: str, data_dir: Path) -> None:
        self.scale = scale
        self.url = database_url
        self.settings = BookingSettings(database_url=database_url, auth_secret=AUTH_SECRET, data_dir=data_dir)
        self.service_env = {
            "DATABASE_URL": database_url,
            "AUTH_SECRET": AUTH_SECRET,
            "DATA_DIR": str(data_dir),
            "RUN_WORKERS": "false",
            "LOG_LEVEL": "INFO",
            "LOG_FORMAT": "json",
            "CREATE_TABLE": "false",
        }
        self.report = Report(meta=run_meta(scale))
        entries, events = seed.catalog(CATALOG_SIZE)
        self.catalog = entries
        self.bench_entry = entries[0]
        self.provider_headers = _bearer(role="provider", sub="provider-user", provider_id=str(entries[0].provider_id))
        self.staff_headers = _bearer(role="staff", sub="staff-bench")
        self._create_schema()
        seed.store(self.url, events)

    # --- set-up ---------------------------------------------------------------------------------

    def _create_schema(self) -> None:
        """Every table, made once before any server starts, as the deploy's migrate job does: servers
        then skip their DDL (CREATE_TABLE=false), which concurrent workers would run into each other."""
        migrate(self.settings, service_parts(), out=io.StringIO())
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(raw_insert_table_ddl())

    def working_set(self, clients: int) -> list[list[UUID]]:
        """Fresh accepted bookings of the bench provider, `BOOKINGS_PER_CLIENT` per client."""
        ids, events = seed.bookings([self.bench_entry], clients * BOOKINGS_PER_CLIENT, completed=False)
        seed.store(self.url, events)
        return [ids[i * BOOKINGS_PER_CLIENT : (i + 1) * BOOKINGS_PER_CLIENT] for i in range(clients)]

    def completed_bookings(self, count: int) -> list[UUID]:
        """Fresh bookings of the bench provider that are completed (and reviewed): certificates may be uploaded."""
        ids, events = seed.bookings([self.bench_entry], count, completed=True)
        seed.store(self.url, events)
        return ids

    def wait_for_projection(self, *tracking_tables: str, timeout: float = 600.0) -> None:
        """Lets read models (default: the booking service's) catch up with the booking events, so that
        no catch-up work runs during a measurement."""
        tables = tracking_tables or BOOKING_TRACKING_TABLES
        positions = " UNION ALL ".join(
            f"SELECT coalesce(max(notification_id), 0) AS tracked FROM {t} WHERE application_name = %s" for t in tables
        )
        query = (
            f"SELECT (SELECT max(notification_id) FROM {seed.EVENTS_TABLE}), (SELECT min(tracked) FROM ({positions}) p)"
        )
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.url, autocommit=True) as conn:
            while True:
                head, tracked = conn.execute(query, [BookingApplication.name] * len(tables)).fetchone()  # type: ignore[misc]
                if (tracked or 0) >= (head or 0):
                    return
                if self.worker.process.poll() is not None:
                    msg = "the booking worker exited; see its log in the temp folder"
                    raise RuntimeError(msg)
                if time.monotonic() > deadline:
                    msg = f"the read models did not catch up within {timeout}s ({tracked} of {head})"
                    raise TimeoutError(msg)
                time.sleep(0.1)

    @contextmanager
    def servers(self) -> Iterator[tuple[Server, Server]]:
        booking = start_uvicorn(
            "booking-api",
            "tests.bench.apps:booking_app",
            self.service_env,
            workers=SERVER_WORKERS,
            ready_path="/readyz",
        )
        bare = start_uvicorn("bare-api", "tests.bench.apps:bare_app", {}, workers=SERVER_WORKERS, ready_path=BARE_PATH)
        self.worker = self._start_projection_worker()
        try:
            yield booking, bare
        finally:
            self.worker.stop()
            booking.stop()
            bare.stop()

    def _start_projection_worker(self) -> Server:
        return start_process(
            "booking-worker",
            [sys.executable, "-c", "from services.booking.worker import main; main()"],
            self.service_env,
        )

    @contextmanager
    def projection_worker_stopped(self) -> Iterator[None]:
        self.worker.stop()
        try:
            yield
        finally:
            self.worker = self._start_projection_worker()

    # --- measurements ---------------------------------------------------------------------------

    def drive(self, kind: str, clients: int, label: str, **spec: Any) -> Measure:
        """Non-HTTP load from `min(clients, SERVER_WORKERS)` processes, `clients` threads in all."""
        processes = min(clients, SERVER_WORKERS)
        specs = []
        for p in range(processes):
            threads = clients // processes + (1 if p < clients % processes else 0)
            specs.append(
                {
                    "kind": kind,
                    "database_url": self.url,
                    "threads": threads,
                    "warmup": self.scale.warmup,
                    "seconds": self.scale.seconds,
                    **spec,
                }
            )
            if "bookings" in spec:
                specs[-1]["bookings"] = spec["bookings"][p::processes]
        results = run_together("tests.bench.drivers", specs, timeout=300)
        latencies = [ms for r in results for ms in r["latencies_ms"]]
        failures = sum(n for r in results for n in r["errors"].values())
        cpu_ms = 1000 * sum(r["cpu_s"] for r in results) / max(1, sum(r["ran"] for r in results))
        samples = Samples(latencies)
        return Measure(label, len(latencies) / self.scale.seconds, "ops/s", samples.p50, samples.p99, failures, cpu_ms)

    def load(self, server: Server, connections: list[list[RequestSpec]], label: str) -> Measure:
        assert server.port is not None
        spec = LoadSpec("127.0.0.1", server.port, self.scale.seconds, self.scale.warmup, connections)
        cpu_before = server.cpu_seconds()
        result = LoadResult(**run_json_process("tests.bench.loadgen", spec.to_json(), timeout=120))
        cpu_ms = 1000 * (server.cpu_seconds() - cpu_before) / max(1, result.issued)
        samples = result.samples()
        return Measure(label, result.rate, "req/s", samples.p50, samples.p99, result.failures, cpu_ms)

    def status_requests(self, bookings: list[UUID], *, idempotent: bool = False) -> list[RequestSpec]:
        headers = {**self.provider_headers, "Content-Type": "application/json"}
        # With keys, each request must be new: the plan repeats with fresh keys instead of cycling.
        plan = status_plan(bookings) * (4 if idempotent else 1)
        return [
            RequestSpec(
                "POST",
                f"/v1/bookings/{booking_id}/status",
                {**headers, "Idempotency-Key": uuid.uuid4().hex} if idempotent else headers,
                json.dumps({"status": status}),
            )
            for booking_id, status in plan
        ]

    def command_figures(self, booking: Server, clients: int, *, suffix: str = "") -> Measure:
        """(a): HTTP vs raw commits vs the bare library, at `clients` concurrent clients."""
        raw = self.drive("raw_insert", clients, f"raw INSERT commits, {clients} cl.")
        stock = self.drive(
            "library_status", clients, f"library (stock) change_status, {clients} cl.",
            bookings=[[str(b) for b in c] for c in self.working_set(clients)],
            provider_id=str(self.bench_entry.provider_id), persistence_module=STOCK_LIBRARY,
        )  # fmt: skip
        ours = self.drive(
            "library_status", clients, f"library (service env) change_status, {clients} cl.",
            bookings=[[str(b) for b in c] for c in self.working_set(clients)],
            provider_id=str(self.bench_entry.provider_id),
        )  # fmt: skip
        http = self.http_commands(booking, clients, suffix)
        target = COMMAND_RATIO_TARGET if clients >= 8 else None
        self.report.add(Figure(f"a.http_vs_raw.c{clients}{suffix}", http, raw, target_ratio=target))
        self.report.add(Figure(f"a.http_vs_library.c{clients}{suffix}", http, stock))
        self.report.add(Figure(f"a.library_vs_raw.c{clients}{suffix}", stock, raw))
        self.report.add(Figure(f"a.service_library_vs_raw.c{clients}{suffix}", ours, raw))
        return raw

    def http_commands(self, booking: Server, clients: int, suffix: str = "", *, idempotent: bool = False) -> Measure:
        sets = self.working_set(clients)
        self.wait_for_projection()
        connections = [self.status_requests(s, idempotent=idempotent) for s in sets]
        keys = " + Idempotency-Key" if idempotent else ""
        label = f"HTTP status change{keys}, {clients} cl.{suffix}"
        if clients < 8:
            return self.load(booking, connections, label)
        with LagProbe(self.url, seed.EVENTS_TABLE, _tracking_table(), BookingApplication.name) as probe:
            http = self.load(booking, connections, label)
        self.lag_figures(probe.samples(), f"{suffix} (keyed commands)" if idempotent else suffix)
        return http

    def lag_figures(self, lags: Samples, suffix: str) -> None:
        """(b): commit → visible in booking_summaries, under the 8-client command load."""
        commit = self._single_commit_latency()
        self.report.add(
            Figure(
                f"b.projection_lag_p50{suffix}",
                Measure(f"projection lag p50{suffix}", lags.p50, "ms"),
                commit,
                note=f"{len(lags.values)} events",
            )
        )
        self.report.add(
            Figure(
                f"b.projection_lag_p99{suffix}",
                Measure(f"projection lag p99{suffix}", lags.p99, "ms"),
                commit,
                target_value=LAG_P99_TARGET_MS,
                at_most=True,
                note=f"{len(lags.values)} events",
            )
        )

    def _single_commit_latency(self) -> Measure:
        """The view must commit at least once: one durable commit is the floor of the lag."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            times = []
            for _ in range(200):
                started = time.perf_counter()
                conn.execute("INSERT INTO bench_raw_inserts (payload) VALUES ('x')")
                times.append((time.perf_counter() - started) * 1000)
        return Measure("one durable commit (median)", Samples(times).p50, "ms")

    def query_figures(self, booking: Server, bare: Server, detail_ids: list[UUID], *, suffix: str = "") -> Measure:
        """(e): detail and list requests/s vs a bare endpoint in the same uvicorn setup."""
        bare_measure = self.load(
            bare,
            [[RequestSpec("GET", BARE_PATH)]] * QUERY_CONNECTIONS,
            f"bare FastAPI constant, {QUERY_CONNECTIONS} conn.",
        )
        per_connection = max(1, len(detail_ids) // QUERY_CONNECTIONS)
        detail = self.load(
            booking,
            [
                [
                    RequestSpec("GET", f"/v1/bookings/{b}", self.provider_headers)
                    for b in detail_ids[i::QUERY_CONNECTIONS]
                ][:per_connection]
                for i in range(QUERY_CONNECTIONS)
            ],
            f"GET /v1/bookings/{{id}}, {QUERY_CONNECTIONS} conn.{suffix}",
        )
        listing = self.load(
            booking,
            [[RequestSpec("GET", "/v1/bookings?limit=50", self.staff_headers)]] * QUERY_CONNECTIONS,
            f"GET /v1/bookings?limit=50 (staff){suffix}",
        )
        self.report.add(Figure(f"e.detail_vs_bare{suffix}", detail, bare_measure))
        self.report.add(Figure(f"e.list_vs_bare{suffix}", listing, bare_measure))
        return bare_measure

    def rebuild_figures(self) -> None:
        """(c): replaying every stored event into each booking read model vs reading them."""
        result = run_json_process("tests.bench.rebuild", {"database_url": self.url, "timeout": 3600}, timeout=7200)
        events = result["events"]
        read = Measure("select_notifications, pages of 500", events / result["read_s"], "events/s")
        decode = Measure(
            "select_notifications + mapper decode", result["decoded"] / result["read_decode_s"], "events/s"
        )
        note = f"{events} events"
        for name, seconds in result["rebuild_s"].items():
            rebuild = Measure(f"rebuild {name}", events / seconds, "events/s")
            self.report.add(Figure(f"c.rebuild_vs_read.{name}", rebuild, read, target_value=REBUILD_TARGET, note=note))
            self.report.add(Figure(f"c.rebuild_vs_read_decode.{name}", rebuild, decode, note=note))

    def vacuum(self) -> None:
        """After a bulk load, as an operator would: otherwise autovacuum works through the new rows
        during the next measurements, on the same two cores."""
        started = time.monotonic()
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE)")
        self.report.meta["vacuum_s"] = round(time.monotonic() - started, 1)

    # --- the run --------------------------------------------------------------------------------

    def run(self) -> Report:
        with self.servers() as (booking, bare):
            self.wait_for_projection()
            raw8 = None
            for clients in (1, 8):
                raw8 = self.command_figures(booking, clients)
            assert raw8 is not None
            idempotent = self.http_commands(booking, 8, idempotent=True)
            self.report.add(Figure("a.http_idempotent_vs_raw.c8", idempotent, raw8, target_ratio=COMMAND_RATIO_TARGET))
            detail_ids = [b for s in self.working_set(8) for b in s]
            self.wait_for_projection()
            self.query_figures(booking, bare, detail_ids)
            with tempfile.TemporaryDirectory(prefix="bench-certificates-") as folder:
                CertificateBench(self, booking, Path(folder)).run(bare)
            with self.projection_worker_stopped():
                self.report.meta["bulk_events"] = seed.bulk_load(self.url, self.catalog, self.scale.bookings)
                self.rebuild_figures()
            self.wait_for_projection()
            self.vacuum()
            suffix = f" @{self.scale.bookings // 1000}k"
            http = self.http_commands(booking, 8, suffix)
            self.report.add(Figure(f"d.http_vs_raw.c8{suffix}", http, raw8, target_ratio=COMMAND_RATIO_TARGET))
            self.query_figures(booking, bare, detail_ids, suffix=suffix)
        self.report.meta["load_average_at_end"] = os.getloadavg()
        return self.report


def _tracking_table() -> str:
    return f"{PROJECTIONS[0].name}_tracking"


# The tracking tables of the booking service's read models that follow the booking events.
BOOKING_TRACKING_TABLES = tuple(
    dict.fromkeys(f"{spec.name}_tracking" for spec in PROJECTIONS if spec.upstream is BookingApplication)
)


def _bearer(**claims: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(secret=AUTH_SECRET, ttl_s=4 * 3600, **claims)}"}  # type: ignore[arg-type]


def run_meta(scale: Scale) -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False)
    with psycopg.connect(os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")) as c:
        pg = c.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    return {
        "scale": asdict(scale),
        "started_at": datetime.now(UTC).isoformat(),
        "git_commit": commit.stdout.strip(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "postgresql": pg,
        "packages": {p: version(p) for p in ("eventsourcing", "fastapi", "uvicorn", "psycopg", "starlette")},
        "server_workers": SERVER_WORKERS,
        "load_average_at_start": os.getloadavg(),
    }
