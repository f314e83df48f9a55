"""Processes of a benchmark run: a fresh database, uvicorn servers, worker processes, helpers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

ADMIN_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REPO = Path(__file__).resolve().parents[2]


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new database for this run, dropped afterwards."""
    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """A process we started (in its own session, so its workers stop with it)."""

    name: str
    process: subprocess.Popen[bytes]
    port: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """CPU time so far of the server and its workers (its session)."""
        return session_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def session_cpu_seconds(session_id: int) -> float:
    """User + system CPU time of the live processes of a session, from /proc."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        # After the command: state ppid pgrp session ... utime (12th) stime (13th).
        if int(fields[3]) == session_id:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def start_process(name: str, argv: list[str], env: dict[str, str], port: int | None = None) -> Server:
    log = open(Path(tempfile.gettempdir()) / f"bench-{name}.log", "wb")  # noqa: SIM115 (lives with the process)
    process = subprocess.Popen(
        argv, env={**os.environ, **env}, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    return Server(name, process, port)


def start_uvicorn(name: str, factory: str, env: dict[str, str], *, workers: int, ready_path: str) -> Server:
    port = free_port()
    argv = [
        sys.executable, "-m", "uvicorn", factory, "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    server = start_process(name, argv, env, port)
    wait_until_ready(server, ready_path)
    return server


def wait_until_ready(server: Server, path: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            log_file = f"{tempfile.gettempdir()}/bench-{server.name}.log"
            msg = f"{server.name} exited with {server.process.returncode}; see {log_file}"
            raise RuntimeError(msg)
        try:
            if httpx.get(server.base_url + path, timeout=2).status_code == 200:
                time.sleep(1.0)  # every worker process has started by now
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop()
    msg = f"{server.name} did not become ready within {timeout}s"
    raise RuntimeError(msg)


def run_json_process(module: str, spec: dict[str, Any], *, timeout: float) -> Any:
    """Runs `python -m module SPEC.json` and returns the JSON it prints."""
    return collect_json(start_json_processes(module, [spec]), timeout=timeout)[0]


def start_json_processes(module: str, specs: list[dict[str, Any]]) -> list[tuple[subprocess.Popen[bytes], str]]:
    """Starts one `python -m module SPEC.json` per spec; `collect_json` gathers their results."""
    started = []
    for spec in specs:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
            json.dump(spec, handle)
        process = subprocess.Popen(
            [sys.executable, "-m", module, handle.name],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        started.append((process, handle.name))
    return started


def run_together(module: str, specs: list[dict[str, Any]], *, timeout: float, lead_s: float = 0.5) -> list[Any]:
    """Starts the processes, waits until each says `ready`, then sends all the same start moment."""
    started = start_json_processes(module, specs)
    for process, _ in started:
        assert process.stdout is not None
        if process.stdout.readline().strip() != b"ready":
            return collect_json(started, timeout=timeout)  # it failed: collect_json reports why
    start_at = f"{time.time() + lead_s}\n".encode()
    for process, _ in started:
        assert process.stdin is not None
        process.stdin.write(start_at)
        process.stdin.flush()
    return collect_json(started, timeout=timeout)


def collect_json(started: list[tuple[subprocess.Popen[bytes], str]], *, timeout: float) -> list[Any]:
    results = []
    for process, spec_file in started:
        out, err = process.communicate(timeout=timeout)
        os.unlink(spec_file)
        if process.returncode != 0:
            msg = f"{process.args[2]} failed ({process.returncode}): {err.decode()[-3000:]}"  # type: ignore[index]
            raise RuntimeError(msg)
        results.append(json.loads(out))
    return results
