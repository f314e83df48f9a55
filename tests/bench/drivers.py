"""Load without HTTP, run as processes: `python -m tests.bench.drivers SPEC.json`.

Kinds:
- `raw_insert`: one single-row INSERT transaction at a time per thread, own connection each:
  the durable-commit ceiling of this PostgreSQL on this disk.
- `library_status`: `BookingApplication.change_status` called directly (the same command the
  HTTP endpoint runs), threads sharing one application, as in a server process.
- `s3_put`: the minio SDK putting the given files to an S3 endpoint, one client per thread:
  what storing a certificate costs without the service around it.

Every thread runs closed-loop until the window ends; operations completed inside the window
count. All processes of one measurement start at the same wall-clock moment, which the
orchestrator sends on stdin once each has printed `ready` (see processes.run_together).
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg

RAW_TABLE = "bench_raw_inserts"
# The size of a stored StatusChanged event: the raw insert writes as many bytes.
RAW_PAYLOAD = b"x" * 220


def raw_insert_table_ddl() -> str:
    return f"CREATE TABLE IF NOT EXISTS {RAW_TABLE} (id BIGSERIAL PRIMARY KEY, payload BYTEA NOT NULL)"


def _raw_insert_ops(spec: dict[str, Any]) -> list[Callable[[], None]]:
    ops = []
    for _ in range(spec["threads"]):
        conn = psycopg.connect(spec["database_url"], autocommit=True)
        statement = f"INSERT INTO {RAW_TABLE} (payload) VALUES (%s)"

        def insert(conn: psycopg.Connection[Any] = conn, statement: str = statement) -> None:
            conn.execute(statement, (RAW_PAYLOAD,), prepare=True)

        ops.append(insert)
    return ops


def _library_status_ops(spec: dict[str, Any]) -> list[Callable[[], None]]:
    from services.booking.application import BookingApplication
    from services.booking.domain import Status
    from services.booking.settings import BookingSettings
    from shared.auth import Principal, Role
    from shared.eventstore import eventsourcing_env

    settings = BookingSettings(
        database_url=spec["database_url"], auth_secret="bench", data_dir=Path(tempfile.gettempdir())
    )
    # The schema exists; processes starting together would otherwise run into each other's DDL.
    env = eventsourcing_env(settings, BookingApplication.name, pre_ping=False) | {"CREATE_TABLE": "false"}
    if spec.get("persistence_module"):
        env["PERSISTENCE_MODULE"] = spec["persistence_module"]
    app = BookingApplication(env=env)
    principal = Principal(sub="provider-user", role=Role.PROVIDER, provider_id=spec["provider_id"])
    ops = []
    for booking_ids in spec["bookings"]:
        plan = status_plan([UUID(b) for b in booking_ids])
        position = iter(range(sys.maxsize))

        def change(plan: list[tuple[UUID, str]] = plan, position: Any = position) -> None:
            booking_id, status = plan[next(position) % len(plan)]
            app.change_status(principal, booking_id, Status(status))

        ops.append(change)
    return ops


def status_plan(booking_ids: list[UUID]) -> list[tuple[UUID, str]]:
    """Every booking to `started`, then every booking to `completed`: cycled, each step is a change."""
    return [(b, "started") for b in booking_ids] + [(b, "completed") for b in booking_ids]


def _s3_put_ops(spec: dict[str, Any]) -> list[Callable[[], None]]:
    import io
    import uuid

    from minio import Minio

    files = [Path(f).read_bytes() for f in spec["files"]]
    ops = []
    for n in range(spec["threads"]):
        client = Minio(spec["endpoint"], access_key=spec["access_key"], secret_key=spec["secret_key"], secure=False)
        position = iter(range(n, sys.maxsize))

        def put(client: Minio = client, position: Any = position) -> None:
            data = files[next(position) % len(files)]
            client.put_object(spec["bucket"], uuid.uuid4().hex, io.BytesIO(data), len(data), "application/pdf")

        ops.append(put)
    return ops


OPERATIONS = {"raw_insert": _raw_insert_ops, "library_status": _library_status_ops, "s3_put": _s3_put_ops}


def run(spec: dict[str, Any]) -> dict[str, Any]:
    ops = OPERATIONS[spec["kind"]](spec)
    window_start = window_end = 0.0
    latencies: list[float] = []
    errors: dict[str, int] = {}
    ran = [0]
    lock = threading.Lock()

    def loop(op: Callable[[], None]) -> None:
        mine: list[float] = []
        count = 0
        while (sent := time.time()) < window_end:
            try:
                op()
            except Exception as error:  # counted and reported: a figure with errors is flagged
                with lock:
                    errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
                continue
            done = time.time()
            if window_start <= done <= window_end:
                mine.append((done - sent) * 1000)
            count += 1
        with lock:
            latencies.extend(mine)
            ran[0] += count

    # Ready: the orchestrator answers with the moment every process starts (slow starts do not skew).
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    window_start = start_at + spec["warmup"]
    window_end = window_start + spec["seconds"]
    time.sleep(max(0.0, start_at - time.time()))
    cpu_before = time.process_time()
    threads = [threading.Thread(target=loop, args=(op,)) for op in ops]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "requests": len(latencies),
        "seconds": spec["seconds"],
        "latencies_ms": latencies,
        "errors": errors,
        "ran": ran[0],
        "cpu_s": time.process_time() - cpu_before,
    }


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    json.dump(run(spec), sys.stdout)


if __name__ == "__main__":
    main()
