"""Readiness answers promptly, whatever its checks do."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from shared.errors import DependencyDown
from shared.http import ReadinessProbe

TIMEOUT_S = 0.2


@pytest.fixture
def release() -> Iterator[threading.Event]:
    released = threading.Event()
    yield released
    released.set()


def counting(check: Callable[[], None]) -> tuple[Callable[[], None], list[int]]:
    calls: list[int] = []

    def counted() -> None:
        calls.append(1)
        check()

    return counted, calls


def test_passing_checks_report_no_failure() -> None:
    assert ReadinessProbe({"database": lambda: None, "storage": lambda: None}, TIMEOUT_S).failures() == {}


def test_a_dependency_that_is_down_is_named_with_its_reason() -> None:
    def down() -> None:
        raise DependencyDown("event store unavailable")

    assert ReadinessProbe({"database": down, "storage": lambda: None}, TIMEOUT_S).failures() == {
        "database": "event store unavailable"
    }


def test_an_unforeseen_error_counts_as_not_ready_instead_of_escaping() -> None:
    def broken() -> None:
        raise RuntimeError("boom")

    assert ReadinessProbe({"cache": broken}, TIMEOUT_S).failures() == {"cache": "RuntimeError"}


def test_a_hanging_check_fails_within_the_timeout_and_is_not_started_twice(release: threading.Event) -> None:
    hanging, calls = counting(lambda: release.wait(30))
    probe = ReadinessProbe({"database": hanging, "storage": lambda: None}, TIMEOUT_S)

    for _ in range(3):
        started = time.monotonic()
        assert probe.failures() == {"database": f"no answer within {TIMEOUT_S:g} s"}
        assert time.monotonic() - started < TIMEOUT_S + 0.5
    assert len(calls) == 1

    release.set()
    deadline = time.monotonic() + 5
    while probe.failures() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert probe.failures() == {}
    assert len(calls) >= 2  # a finished run is not reused: each probe checks afresh
