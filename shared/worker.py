"""Worker processes (production mode): run a service's projections in the foreground.

SIGTERM or SIGINT asks every projection to stop; each finishes the event it is processing
(the runner commits rows and tracking together), then the process exits.
"""

from __future__ import annotations

import gc
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType

import structlog

from shared.feed import ProjectionSpec, SupervisedProjection
from shared.settings import ServiceSettings

log = structlog.get_logger(__name__)


def run_workers(
    settings: ServiceSettings,
    specs: Sequence[ProjectionSpec],
    *,
    extra: Sequence[tuple[Callable[[], None], Callable[[], None]]] = (),
) -> None:
    """Runs the projections (and `extra` (run, stop) pairs) until a termination signal."""
    projections = [SupervisedProjection(settings, spec) for spec in specs]
    stopped = threading.Event()

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping workers", signal=signal.Signals(signum).name)
        stopped.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # What is imported by now lives as long as the process: out of the collector's sight, so that
    # its full collections, which stop every runner, no longer walk it (100-300 ms under load).
    gc.freeze()
    for projection in projections:
        projection.start()
    threads = [threading.Thread(target=run, name=f"worker-{i}", daemon=True) for i, (run, _) in enumerate(extra)]
    for thread in threads:
        thread.start()
    log.info("workers running", projections=[s.name for s in specs], extra=len(extra))
    stopped.wait()
    for _, stop_extra in extra:
        stop_extra()
    for projection in projections:
        projection.request_stop()  # all at once: each takes up to a second to notice
    for projection in projections:
        projection.stop()
    for thread in threads:
        thread.join(timeout=30)
    log.info("workers stopped")
