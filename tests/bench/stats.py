"""Latency samples and their percentiles."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Samples:
    values: list[float]

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile (q in 0..100); NaN without samples."""
        if not self.values:
            return math.nan
        ordered = sorted(self.values)
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        return ordered[rank - 1]

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p99(self) -> float:
        return self.percentile(99)
