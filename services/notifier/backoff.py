"""Retry schedule for failed sends: exponential backoff with full jitter (pure)."""

from __future__ import annotations

import math
import random

MAX_ATTEMPTS = 8
"""After this many failed attempts a notification is parked as a dead letter."""

# 2.0 ** 1023 is the largest power of two a float holds; beyond it the product would overflow.
_MAX_EXPONENT = 1023


def retry_delay(
    attempt: int,
    *,
    base_s: float = 30.0,
    cap_s: float = 3600.0,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retrying after failed attempt number `attempt` (1-based).

    Full jitter (uniform over [0, ceiling]) spreads retries of many notifications that failed
    together, e.g. during an SMTP outage, instead of sending them back in one burst.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    if not (base_s >= 0 and 0 <= cap_s < math.inf):
        raise ValueError("base_s must be >= 0 and cap_s finite and >= 0")
    ceiling = min(cap_s, base_s * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
    return (rng or random).uniform(0.0, ceiling)
