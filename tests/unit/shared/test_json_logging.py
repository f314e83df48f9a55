"""LOG_FORMAT=json: every line is one JSON object with the request id, the libraries' lines too;
and each request's access line and latency metric."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import structlog
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import generate_latest

from shared.http import ACCESS_LOG, Observability, UtcTimestamps, configure_logging, request_id_headers


@pytest.fixture
def json_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("INFO", "json")
    structlog.contextvars.bind_contextvars(request_id="req-42")
    try:
        yield
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
        ACCESS_LOG.render_json(False)  # through structlog again, as when logging is not configured
        root.handlers, root.level = handlers, level


def records(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_standard_library_records_are_json_with_the_request_id(
    json_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logging.getLogger("uvicorn.error").info("started on port %d", 8001)
    logging.getLogger("uvicorn.error").debug("below the level")

    (record,) = records(capsys.readouterr().err)
    assert record["event"] == "started on port 8001"
    assert (record["level"], record["logger"], record["request_id"]) == ("info", "uvicorn.error", "req-42")
    assert "timestamp" in record


def test_a_traceback_stays_inside_its_json_line(json_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        raise ValueError("bad value")
    except ValueError:
        logging.getLogger("shared.feed").exception("projection stopped")

    (record,) = records(capsys.readouterr().err)
    assert record["event"] == "projection stopped"
    assert "ValueError: bad value" in str(record["exception"])


def test_structlog_records_are_json_with_the_request_id(json_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    structlog.get_logger("shared.worker").info("workers running", projections=2)

    (record,) = records(capsys.readouterr().out)
    assert (record["event"], record["projections"], record["request_id"]) == ("workers running", 2, "req-42")


def test_the_request_id_goes_on_to_the_next_service(json_logging: None) -> None:
    assert request_id_headers() == {"x-request-id": "req-42"}


def observed_app(observability: Observability | None = None) -> TestClient:
    app = FastAPI()

    @app.get("/things/{thing_id}")
    async def thing(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    return TestClient((observability or Observability("test")).middleware(app))


def test_each_request_is_logged_in_the_shape_of_any_structlog_line(
    json_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """The access line is rendered without structlog's chain (it is the hottest line): same fields, same order."""
    structlog.contextvars.clear_contextvars()
    answer = observed_app().get("/things/7")
    structlog.contextvars.bind_contextvars(request_id=answer.headers["x-request-id"])
    structlog.get_logger("shared.http").info(
        "request", method="GET", route="/things/{thing_id}", status=200, duration_ms=0.5
    )

    access, through_structlog = records(capsys.readouterr().out)
    assert list(access) == list(through_structlog)
    assert {name: access[name] for name in ("event", "method", "route", "status", "level", "request_id")} == {
        "event": "request",
        "method": "GET",
        "route": "/things/{thing_id}",
        "status": 200,
        "level": "info",
        "request_id": answer.headers["x-request-id"],
    }
    assert isinstance(access["duration_ms"], float) and str(access["timestamp"]).endswith("Z")
    datetime.fromisoformat(str(access["timestamp"]))


@pytest.mark.parametrize("request_id", ["a1b2", 'with " and \\', "åäö \x01"])
def test_the_access_line_is_rendered_as_json_dumps_renders_it(
    json_logging: None, capsys: pytest.CaptureFixture[str], request_id: str
) -> None:
    """Written without json.dumps, for speed: the same text all the same, whatever id a client sends."""
    ACCESS_LOG(request_id, "GET", "/things/{thing_id}", 200, 0.25)

    line = capsys.readouterr().out.rstrip("\n")
    assert line == json.dumps(json.loads(line))
    assert json.loads(line)["request_id"] == request_id


@pytest.mark.parametrize("now", [0.0, 1_764_410_081.0, 1_764_410_081.5, 1_764_410_081.947383, 1_764_410_081.9999997])
def test_timestamps_are_written_as_datetime_writes_them(now: float) -> None:
    expected = datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")
    assert UtcTimestamps(clock=lambda: now).now() == expected


def test_no_access_lines_above_info_level(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("WARNING", "json")
    try:
        assert observed_app().get("/things/7").status_code == 200
    finally:
        structlog.reset_defaults()
        ACCESS_LOG.render_json(False)
        root.handlers, root.level = handlers, level
    assert capsys.readouterr().out == ""


def test_calls_to_other_services_are_not_logged_twice_unless_debugging(json_logging: None) -> None:
    """The called service logs each call with the same request id; httpx's own line is for debugging."""
    httpx_log = logging.getLogger("httpx")
    try:
        assert not httpx_log.isEnabledFor(logging.INFO) and httpx_log.isEnabledFor(logging.WARNING)
        configure_logging("DEBUG", "json")
        assert httpx_log.isEnabledFor(logging.DEBUG)
    finally:
        httpx_log.setLevel(logging.NOTSET)


def test_each_request_is_measured_by_route_and_status() -> None:
    observability = Observability("test")
    client = observed_app(observability)
    for path in ("/things/1", "/things/2", "/nowhere"):
        client.get(path)
    exposed = generate_latest(observability.registry).decode()
    assert (
        'http_request_duration_seconds_count{method="GET",route="/things/{thing_id}",service="test",status="200"} 2.0'
        in exposed
    )
    assert (
        'http_request_duration_seconds_count{method="GET",route="unmatched",service="test",status="404"} 1.0' in exposed
    )
