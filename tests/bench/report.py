"""Figures next to their baselines: the printed table and results.json."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_FILE = Path(__file__).resolve().parent / "results.json"


@dataclass(frozen=True)
class Measure:
    """One measured quantity: a rate (per second) or a latency (ms), with its latency percentiles."""

    label: str
    value: float
    unit: str
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    failures: int = 0
    cpu_ms_per_op: float = math.nan
    """CPU of the process(es) doing the work (server, or driver), per operation: robust to a busy machine."""


@dataclass(frozen=True)
class Figure:
    """`measure` against `baseline` measured in the same run; `target` is the ratio or the absolute
    value it must reach (`at_most` for latencies)."""

    key: str
    measure: Measure
    baseline: Measure | None = None
    target_ratio: float | None = None
    target_value: float | None = None
    at_most: bool = False
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.baseline.value:
            return None
        return self.measure.value / self.baseline.value

    @property
    def meets_target(self) -> bool | None:
        checks = []
        if self.target_ratio is not None and self.ratio is not None:
            checks.append(self.ratio <= self.target_ratio if self.at_most else self.ratio >= self.target_ratio)
        if self.target_value is not None:
            value = self.measure.value
            checks.append(value <= self.target_value if self.at_most else value >= self.target_value)
        if self.measure.failures:
            checks.append(False)
        return all(checks) if checks else None

    def target_text(self) -> str:
        sign = "≤" if self.at_most else "≥"
        if self.target_ratio is not None:
            return f"{sign} {self.target_ratio:g}×"
        if self.target_value is not None:
            return f"{sign} {self.target_value:g} {self.measure.unit}"
        return ""


@dataclass
class Report:
    meta: dict[str, Any]
    figures: list[Figure] = field(default_factory=list)

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)
        print(format_row(figure), flush=True)

    def write(self, path: Path = RESULTS_FILE) -> None:
        rows = [{**asdict(f), "ratio": f.ratio, "meets_target": f.meets_target} for f in self.figures]
        path.write_text(json.dumps({"meta": self.meta, "figures": rows}, indent=2, default=str) + "\n")

    def table(self) -> str:
        return "\n".join([HEADER, "-" * len(HEADER), *(format_row(f) for f in self.figures)])


HEADER = (
    f"{'figure':<48} {'value':>16} {'p50/p99 ms':>13} {'cpu ms/op':>9}  {'baseline':<36} {'value':>16} "
    f"{'cpu ms/op':>9} {'ratio':>6}  {'target':<14} ok"
)


def _number(measure: Measure) -> str:
    return f"{measure.value:,.1f} {measure.unit}"


def _percentiles(measure: Measure | None) -> str:
    if measure is None or math.isnan(measure.p50_ms):
        return ""
    return f"{measure.p50_ms:.1f}/{measure.p99_ms:.1f}"


def _cpu(measure: Measure | None) -> str:
    if measure is None or math.isnan(measure.cpu_ms_per_op):
        return ""
    return f"{measure.cpu_ms_per_op:.2f}"


def format_row(figure: Figure) -> str:
    baseline = figure.baseline
    ratio = f"{figure.ratio:.2f}" if figure.ratio is not None else ""
    verdict = {True: "yes", False: "NO", None: ""}[figure.meets_target]
    failures = f"  ({figure.measure.failures} failed requests)" if figure.measure.failures else ""
    return (
        f"{figure.measure.label:<48.48} {_number(figure.measure):>16} {_percentiles(figure.measure):>13} "
        f"{_cpu(figure.measure):>9}  {(baseline.label if baseline else ''):<36.36} "
        f"{(_number(baseline) if baseline else ''):>16} {_cpu(baseline):>9} {ratio:>6}  {figure.target_text():<14} "
        f"{verdict}{failures}"
    )
