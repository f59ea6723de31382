"""Prometheus metrics of the API process, served at ``/metrics``.

Submits are counted where they happen (this process). Completions, failures and processing
times are read from the read model at scrape time, so every API replica reports the whole
system's figures whichever process projected them (aggregate with ``max`` across replicas).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import psycopg
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("api.metrics")

# Processing time buckets in seconds: classical tasks take tens of milliseconds, diffusion
# tasks seconds to minutes, video up to ten minutes.
BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_SCRAPE_TIMEOUT_S = 2


class ReadModelCollector(Collector):
    def __init__(self, database_url: str) -> None:
        self._url = database_url

    def describe(self) -> list:
        return []  # values come from the database at scrape time; no registration-time query

    def collect(self) -> Iterator:
        completed = CounterMetricFamily("compute_tasks_completed", "Tasks that ended COMPLETED.",
                                        labels=["task_type"])
        failed = CounterMetricFamily("compute_tasks_failed",
                                     "Tasks that ended FAILED (latest attempt).",
                                     labels=["task_type", "error_code"])
        by_status = GaugeMetricFamily("compute_tasks", "Tasks in the read model by status.",
                                      labels=["task_type", "status"])
        hist = HistogramMetricFamily("compute_task_processing_seconds",
                                     "PROCESSING to COMPLETED time of completed tasks.",
                                     labels=["task_type"])
        generations = GaugeMetricFamily("compute_generations", "Generations in the read model by status.",
                                        labels=["strategy", "generation_type", "status"])
        fallbacks = CounterMetricFamily(
            "compute_task_fallbacks", "COMPLETED tasks a fallback provider produced, by reason "
            "(capability, or the primary's error code; docs/WORKERS.md).", labels=["task_type", "reason"])
        up = GaugeMetricFamily("compute_read_model_up", "1 when the read model answered this scrape.")
        try:
            self._fill(completed, failed, by_status, hist, generations, fallbacks)
            up.add_metric([], 1)
        except psycopg.Error as exc:
            log.warning("metrics: read model unavailable: %s", exc)
            up.add_metric([], 0)
        yield from (completed, failed, by_status, hist, generations, fallbacks, up)

    def _fill(self, completed: CounterMetricFamily, failed: CounterMetricFamily,
              by_status: GaugeMetricFamily, hist: HistogramMetricFamily,
              generations: GaugeMetricFamily, fallbacks: CounterMetricFamily) -> None:
        bucket_sql = ", ".join(f"count(*) FILTER (WHERE duration_ms <= {b * 1000:g})" for b in BUCKETS_S)
        with psycopg.connect(self._url, connect_timeout=_SCRAPE_TIMEOUT_S) as conn:
            for task_type, status, code, n in conn.execute(
                "SELECT task_type, status, error_code, count(*) FROM tasks"
                " GROUP BY task_type, status, error_code ORDER BY 1, 2, 3"
            ):
                by_status.add_metric([task_type, status], n)
                if status == "COMPLETED":
                    completed.add_metric([task_type], n)
                elif status == "FAILED":
                    failed.add_metric([task_type, code or "UNKNOWN"], n)
            for row in conn.execute(
                f"SELECT task_type, {bucket_sql}, count(*), coalesce(sum(duration_ms), 0)"
                " FROM tasks WHERE status = 'COMPLETED' AND duration_ms IS NOT NULL"
                " GROUP BY task_type ORDER BY 1"
            ):
                task_type, counts, total, sum_ms = row[0], row[1:-2], row[-2], row[-1]
                buckets = [(f"{b:g}", c) for b, c in zip(BUCKETS_S, counts)] + [("+Inf", total)]
                hist.add_metric([task_type], buckets, float(sum_ms) / 1000.0)
            for strategy, generation_type, status, n in conn.execute(
                "SELECT strategy, generation_type, status, count(*) FROM generations"
                " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
            ):
                generations.add_metric([strategy, generation_type, status], n)
            for task_type, reason, n in conn.execute(
                "SELECT task_type, result->'metadata'->>'fallback_reason', count(*) FROM tasks"
                " WHERE status = 'COMPLETED' AND result->'metadata'->>'fallback_reason' IS NOT NULL"
                " GROUP BY 1, 2 ORDER BY 1, 2"
            ):
                fallbacks.add_metric([task_type, reason], n)


class ApiMetrics:
    """The API's own registry (one per app, so tests can build several apps)."""

    def __init__(self, database_url: str) -> None:
        self.registry = CollectorRegistry()
        self.submits = Counter("compute_api_submits", "Tasks accepted by POST /tasks.",
                               ["task_type"], registry=self.registry)
        self.generation_submits = Counter(
            "compute_api_generation_submits", "Generations accepted by the POST /generations routes.",
            ["strategy", "generation_type"], registry=self.registry)
        self.cancels = Counter("compute_api_cancels", "Cancels accepted by the API.",
                               registry=self.registry)
        self.registry.register(ReadModelCollector(database_url))
