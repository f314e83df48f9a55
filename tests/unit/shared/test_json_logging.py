"""LOG_FORMAT=json: every line is one JSON object with the request id, the libraries' lines too."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from shared.http import configure_logging, request_id_headers


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


def test_a_traceback_stays_inside_its_json_line(
    json_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        raise ValueError("bad value")
    except ValueError:
        logging.getLogger("shared.feed").exception("projection stopped")

    (record,) = records(capsys.readouterr().err)
    assert record["event"] == "projection stopped"
    assert "ValueError: bad value" in str(record["exception"])


def test_structlog_records_are_json_with_the_request_id(
    json_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    structlog.get_logger("shared.worker").info("workers running", projections=2)

    (record,) = records(capsys.readouterr().out)
    assert (record["event"], record["projections"], record["request_id"]) == ("workers running", 2, "req-42")


def test_the_request_id_goes_on_to_the_next_service(json_logging: None) -> None:
    assert request_id_headers() == {"x-request-id": "req-42"}
