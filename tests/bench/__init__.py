"""Benchmarks against the physical limits (`make bench`, `python -m tests.bench --scale default|large`).

Real servers (uvicorn on loopback), a fresh PostgreSQL database per run, load from separate
processes. Every figure is printed next to a baseline measured in the same run (the raw
durable-commit ceiling, the bare library, a bare endpoint, a bare read), with the ratio;
the table is also written to tests/bench/results.json (kept out of git).

Not part of `make test`: no module here is named like a test.
"""
