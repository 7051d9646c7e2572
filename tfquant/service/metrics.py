"""The service's Prometheus metrics (prometheus-client), one registry per server."""

from __future__ import annotations

import datetime
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from .store import STATUSES, Store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 900, 3600)


class _StoreCollector:
    """Jobs by status and the queue length, read from the store at scrape time."""

    def __init__(self, store: Store, running: Callable[[], int]):
        self.store, self.running = store, running

    def collect(self):
        counts = self.store.counts()
        jobs = GaugeMetricFamily("tfquant_jobs", "Jobs in the store by status.", labels=["status"])
        for status in STATUSES:
            jobs.add_metric([status], counts[status])
        yield jobs
        yield GaugeMetricFamily("tfquant_queue_length", "Jobs waiting for a worker.", value=counts["queued"])
        yield GaugeMetricFamily("tfquant_workers_running", "Worker processes running a job now.", value=self.running())


class Metrics:
    def __init__(self, store: Store, running: Callable[[], int]):
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_StoreCollector(store, running))
        self.submitted = Counter("tfquant_jobs_submitted", "Jobs accepted (202).", registry=self.registry)
        self.refused = Counter("tfquant_submissions_refused", "Submissions refused, by HTTP status.", ["code"],
                               registry=self.registry)
        self.refused_bytes = Counter("tfquant_upload_bytes_refused", "Upload bytes received and then refused.",
                                     registry=self.registry)
        self.finished = Counter("tfquant_jobs_finished", "Jobs that ended, by final status.", ["status"],
                                registry=self.registry)
        self.duration = Histogram("tfquant_job_duration_seconds", "Seconds from a job's start to its end.",
                                  ["status"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.validation = Histogram("tfquant_validation_seconds", "Seconds to validate a submission in a worker.",
                                    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60), registry=self.registry)
        self._store = store

    def job_finished(self, job_id: str) -> None:
        job = self._store.get(job_id)
        if job is None or job.started is None or job.finished is None:
            return
        parse = datetime.datetime.fromisoformat
        self.finished.labels(job.status).inc()
        self.duration.labels(job.status).observe((parse(job.finished) - parse(job.started)).total_seconds())

    def render(self) -> bytes:
        return generate_latest(self.registry)
