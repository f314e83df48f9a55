"""HTTP load generator, run as its own process: `python -m tests.bench.loadgen SPEC.json`.

Keep-alive connections on asyncio (uvloop) with httptools' response parser: a few microseconds
of client CPU per request, so that the servers, not the client, set the figures. Each
connection cycles through its own list of requests, one at a time (closed loop). Requests
completed inside the measuring window count; the window starts after a warm-up.
The result is printed as JSON on stdout (see `LoadResult`).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httptools
import uvloop

from tests.bench.stats import Samples


@dataclass
class RequestSpec:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None
    body_file: str | None = None
    """A binary body (an upload form), read from this file."""

    def encode(self, host: str) -> bytes:
        body = Path(self.body_file).read_bytes() if self.body_file else (self.body or "").encode()
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        if self.body is not None or self.body_file is not None:
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class LoadSpec:
    host: str
    port: int
    seconds: float
    warmup: float
    connections: list[list[RequestSpec]]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoadSpec:
        return cls(
            host=data["host"],
            port=data["port"],
            seconds=data["seconds"],
            warmup=data["warmup"],
            connections=[[RequestSpec(**r) for r in requests] for requests in data["connections"]],
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies_ms: list[float]
    statuses: dict[str, int]
    client_cpu_s: float
    issued: int
    """Every request, warm-up included (for CPU per request)."""

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def failures(self) -> int:
        return sum(n for status, n in self.statuses.items() if not status.startswith("2"))

    def samples(self) -> Samples:
        return Samples(self.latencies_ms)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; `exchange()` sends a request and waits for the whole response."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[int] | None = None
        self._transport: Any = None  # uvloop's transports are not asyncio.Transport instances

    def connection_made(self, transport: Any) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_message_complete(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(self._parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("the server closed the connection"))

    async def exchange(self, raw: bytes) -> int:
        assert self._transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(raw)
        return await self._waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def _drive(spec: LoadSpec) -> LoadResult:
    loop = asyncio.get_running_loop()
    host = f"{spec.host}:{spec.port}"
    connections = []
    for _ in spec.connections:
        _, protocol = await loop.create_connection(_Connection, spec.host, spec.port)
        connections.append(protocol)
    started = time.perf_counter()
    window_start = started + spec.warmup
    window_end = window_start + spec.seconds
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    issued = 0

    async def run(connection: _Connection, requests: list[bytes]) -> None:
        nonlocal issued
        index = 0
        while True:
            sent = time.perf_counter()
            if sent >= window_end:
                return
            status = await connection.exchange(requests[index % len(requests)])
            done = time.perf_counter()
            index += 1
            issued += 1
            if window_start <= done <= window_end:
                latencies.append((done - sent) * 1000)
                statuses[str(status)] = statuses.get(str(status), 0) + 1

    cpu_before = time.process_time()
    encoded = [[r.encode(host) for r in requests] for requests in spec.connections]
    await asyncio.gather(*(run(c, r) for c, r in zip(connections, encoded, strict=True)))
    cpu = time.process_time() - cpu_before
    for connection in connections:
        connection.close()
    return LoadResult(len(latencies), spec.seconds, latencies, statuses, cpu, issued)


def main() -> None:
    spec = LoadSpec.from_json(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")))
    result = uvloop.run(_drive(spec))
    json.dump(asdict(result), sys.stdout)


if __name__ == "__main__":
    main()
