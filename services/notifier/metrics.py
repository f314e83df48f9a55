"""Prometheus metrics of the notifier, read from the notification log at scrape time.

Counting from the read model (rather than counters in the sender's memory) gives the same numbers
in every process: the API exposes /metrics while the worker, elsewhere, does the sending.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.notifier.projections import NotificationLog
from shared.http import STORE_UNAVAILABLE_ERRORS

log = structlog.get_logger(__name__)


class NotificationMetrics(Collector):
    def __init__(self, log_view: NotificationLog) -> None:
        self._log_view = log_view

    def collect(self) -> Iterator[Metric]:
        try:
            stats = self._log_view.queue_statistics()
        except STORE_UNAVAILABLE_ERRORS as error:
            log.warning("notification metrics unavailable", error=type(error).__name__)
            return
        yield CounterMetricFamily(
            "notifications_sent", "Notifications delivered to the mail server", value=stats["sent"]
        )
        yield CounterMetricFamily("notifications_failed", "Failed delivery attempts", value=stats["failures"])
        yield GaugeMetricFamily("notifications_queue_depth", "Notifications waiting to be sent", value=stats["pending"])
        yield GaugeMetricFamily(
            "notifications_dead_letters", "Notifications parked as dead letters", value=stats["dead"]
        )
        yield GaugeMetricFamily(
            "notifications_oldest_pending_age_seconds",
            "How long the longest-waiting due notification has been due (0: none due)",
            value=_overdue_seconds(stats["oldest_due_at"]),
        )


def _overdue_seconds(oldest_due_at: str | None) -> float:
    if oldest_due_at is None:
        return 0.0
    return max(0.0, (datetime.now(UTC) - datetime.fromisoformat(oldest_due_at)).total_seconds())
