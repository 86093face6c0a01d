"""Prometheus metrics of one server (`GET /metrics`): what this process did (counters, gauges,
phase durations) and what the store holds (jobs by state, queue depth, counted at scrape time)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from engine.service.store import QUEUED, STATES, Store

log = logging.getLogger(__name__)


class ServiceMetrics:
    """Prometheus metrics of one server (its own registry, so tests can run several)."""

    def __init__(self, store: Store):
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(StoreCollector(store))
        self.phase_seconds = Histogram(
            "vipe_phase_duration_seconds",
            "Duration of each phase of succeeded jobs",
            ["phase"],
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 14400),
            registry=self.registry,
        )
        self.encoder_in_use = Gauge(
            "vipe_encoder_in_use",
            "Jobs of this server encoding with each encoder now",
            ["encoder"],
            registry=self.registry,
        )
        self.finished = Counter(
            "vipe_jobs_finished",
            "Jobs this server finished, by final state",
            ["state"],
            registry=self.registry,
        )
        self.submitted = Counter(
            "vipe_jobs_submitted", "Jobs accepted by POST /Job", registry=self.registry
        )
        self.running = Gauge(
            "vipe_jobs_running_here", "Jobs running in this process", registry=self.registry
        )


class StoreCollector:
    """Jobs by state and the queue depth, counted in the store at scrape time (so they are
    right across restarts and across nodes sharing one store)."""

    def __init__(self, store: Store):
        self.store = store

    def describe(self) -> list[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            counts = self.store.count_by_state()
        except Exception:
            log.exception("metrics: the job store cannot be read")
            return
        jobs = GaugeMetricFamily("vipe_jobs", "Jobs in the store by state", labels=["state"])
        for state in STATES:
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        yield GaugeMetricFamily(
            "vipe_queue_depth", "Jobs waiting to run", value=counts.get(QUEUED, 0)
        )
