"""`make run`: the three services on the embedded default (SQLite files, folders, .eml mail under var/).

Each service is its own process (as in production); projections and the notifier run inside
them (RUN_WORKERS=true). Ctrl-C stops all three.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SERVICES = [
    ("booking", "booking-api", "BOOKING_PORT", 8001),
    ("certificate", "certificate-api", "CERTIFICATE_PORT", 8002),
    ("notifier", "notifier-api", "NOTIFIER_PORT", 8003),
]


def main() -> int:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "RUN_WORKERS": os.environ.get("RUN_WORKERS", "true")}
    env.setdefault("DATA_DIR", "var")
    processes = []
    for name, script, port_var, default_port in SERVICES:
        port = int(env.get(port_var, default_port))
        env[port_var] = str(port)
        processes.append((name, port, subprocess.Popen([str(bin_dir / script)], env=env)))
    try:
        for name, port, process in processes:
            _wait_until_healthy(name, port, process)
        print(f"\nEmbedded mode is up (data under {env['DATA_DIR']}/):")
        for name, port, _ in processes:
            print(f"  {name:<12} http://127.0.0.1:{port}   docs: http://127.0.0.1:{port}/docs")
        print("  tokens:      make token ROLE=staff SUB=me      (Ctrl-C stops everything)\n", flush=True)
        while all(process.poll() is None for _, _, process in processes):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for _, _, process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, _, process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_until_healthy(name: str, port: int, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{name} did not become healthy on port {port}")


if __name__ == "__main__":
    sys.exit(main())
