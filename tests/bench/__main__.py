"""`python -m tests.bench --scale default|large`: run every benchmark, print the table, write results.json."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import tempfile
from pathlib import Path

from tests.bench.processes import fresh_database
from tests.bench.report import RESULTS_FILE
from tests.bench.suite import SCALES, Bench


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--scale", choices=sorted(SCALES), default="default")
    parser.add_argument("--bookings", type=int, help="bookings to bulk-load (overrides the scale's)")
    parser.add_argument("--seconds", type=float, help="measuring window of each figure (overrides the scale's)")
    args = parser.parse_args()
    # Stopped from outside: unwind, so that the servers stop and the database is dropped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    scale = SCALES[args.scale]
    if args.bookings is not None:
        scale = dataclasses.replace(scale, bookings=args.bookings)
    if args.seconds is not None:
        scale = dataclasses.replace(scale, seconds=args.seconds)
    with tempfile.TemporaryDirectory(prefix="bench-") as data_dir, fresh_database() as database_url:
        report = Bench(scale, database_url, Path(data_dir)).run()
    report.write()
    print()
    print(report.table())
    print(f"\nwritten to {RESULTS_FILE}")


if __name__ == "__main__":
    main()
