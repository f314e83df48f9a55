"""Retry delays: exponential backoff with full jitter."""

from __future__ import annotations

import random
import statistics
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notifier.backoff import retry_delay

seconds = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(
    attempt=st.integers(min_value=1, max_value=5000),
    base_s=seconds,
    cap_s=seconds,
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_delay_lies_between_zero_and_the_capped_exponential(
    attempt: int, base_s: float, cap_s: float, seed: int
) -> None:
    delay = retry_delay(attempt, base_s=base_s, cap_s=cap_s, rng=random.Random(seed))

    # Exact arithmetic: the bound itself must not overflow for large attempts.
    ceiling = min(Fraction(cap_s), Fraction(base_s) * 2 ** (attempt - 1))
    assert 0 <= Fraction(delay) <= ceiling


@given(attempt=st.integers(min_value=1, max_value=64))
def test_default_random_source_respects_the_same_bounds(attempt: int) -> None:
    delay = retry_delay(attempt)

    assert 0.0 <= delay <= min(3600.0, 30.0 * 2 ** (attempt - 1))


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 30.0), (3, 120.0), (8, 3600.0), (40, 3600.0)])
def test_jitter_spreads_over_the_whole_range(attempt: int, ceiling: float) -> None:
    rng = random.Random(20240301)
    delays = [retry_delay(attempt, rng=rng) for _ in range(2000)]

    assert max(delays) <= ceiling
    assert min(delays) < 0.01 * ceiling
    assert max(delays) > 0.99 * ceiling
    assert statistics.fmean(delays) == pytest.approx(ceiling / 2, rel=0.05)


def test_same_seed_gives_the_same_schedule() -> None:
    first = [retry_delay(n, rng=random.Random(7)) for n in range(1, 9)]
    again = [retry_delay(n, rng=random.Random(7)) for n in range(1, 9)]

    assert first == again


@pytest.mark.parametrize(
    "arguments",
    [
        {"attempt": 0},
        {"attempt": -3},
        {"attempt": 1, "base_s": -1.0},
        {"attempt": 1, "cap_s": -1.0},
        {"attempt": 1, "cap_s": float("inf")},
        {"attempt": 1, "base_s": float("nan")},
    ],
)
def test_nonsense_arguments_are_refused(arguments: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        retry_delay(**arguments)  # type: ignore[arg-type]
