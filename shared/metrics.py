"""Prometheus metrics about the event stores, shared by the services."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

from eventsourcing.persistence import ApplicationRecorder
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


class EventsWrittenCollector(Collector):
    """Counter `events_written_total{application}`: events committed to each event store, read from the
    store on each scrape (its highest notification id).

    Read from the store rather than counted in the process, so it includes what every replica and
    worker wrote and survives restarts: `rate(events_written_total[5m])` is the write rate of the
    whole system, whichever replica is scraped.
    """

    def __init__(self, recorders: Mapping[str, ApplicationRecorder]) -> None:
        self._recorders = recorders

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = self._family()
        for application, recorder in self._recorders.items():
            try:
                written = recorder.max_notification_id() or 0
            except Exception:  # a scrape must still answer when the database is down; readiness reports that
                log.warning("events written unavailable for %s", application, exc_info=True)
                continue
            family.add_metric([application], written)
        yield family

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily("events_written", "Events committed to the event store", labels=["application"])
