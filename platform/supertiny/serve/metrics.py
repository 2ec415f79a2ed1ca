"""Prometheus metrics of one app, in its own CollectorRegistry (two apps in a process never mix).

With several server processes (``supertiny serve --workers N``) ``PROMETHEUS_MULTIPROC_DIR`` is set before
the workers start: prometheus_client then keeps every worker's values in files there, and ``/metrics``, whichever
worker answers it, reads and sums them all (prometheus_client's multiprocess mode).
"""

import os
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
LOG_GAUGE_REFRESH_S = 1.0  # multiprocess mode: how often a worker writes its log writer's gauges to its file


class Metrics:
    """Requests, latency, who served (and the share of each tier), escalations, fallbacks, the log writer."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        # prometheus_client decides at import whether values live in files, from the same variable
        self.multiprocess_dir = os.environ.get(MULTIPROCESS_ENV) or None
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("supertiny_requests", "Chat completion requests by route and HTTP status.",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("supertiny_request_latency_seconds", "End-to-end latency of chat completions.",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.overhead = Histogram("supertiny_routing_overhead_seconds",
                                  "Latency added by the server (parsing, routing, logging) over model time.",
                                  ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.served = Counter("supertiny_served", "Answers by route and the policy role that served them "
                              "(tiny, llm, hybrid, a, b, primary, shadow).", ["route", "tier"], registry=self.registry)
        self.escalations = Counter("supertiny_escalations", "Answers handed from the tiny model to the LLM, by reason.",
                                   ["route", "reason"], registry=self.registry)
        self.fallbacks = Counter("supertiny_fallbacks", "Answers given by another tier because a tier failed.",
                                 ["route", "failed_tier"], registry=self.registry)
        self.tokens = Counter("supertiny_completion_tokens", "Completion tokens by route and the tier that wrote them.",
                              ["route", "tier"], registry=self.registry)
        self.shadow_agreement = Counter("supertiny_shadow_results", "Shadow runs by route and outcome "
                                        "(agree, disagree, error).", ["route", "result"], registry=self.registry)
        # multiprocess_mode (ignored with one process): what /metrics shows of the workers' values
        self.log_pending = Gauge("supertiny_request_log_pending", "Request log entries not yet written.",
                                 registry=self.registry, multiprocess_mode="livesum")
        self.log_written = Gauge("supertiny_request_log_written", "Request log entries written since start.",
                                 registry=self.registry, multiprocess_mode="sum")
        self.log_lost = Gauge("supertiny_request_log_lost", "Request log entries dropped (queue full) or rejected.",
                              registry=self.registry, multiprocess_mode="sum")
        self._shares: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._lock = threading.Lock()
        self.registry.register(_ShareCollector(self._share_rows))
        self._writer: Any = None
        self._stop = threading.Event()

    def watch_log_writer(self, writer: Any) -> None:
        if self.multiprocess_dir is None:
            self.log_pending.set_function(lambda: writer.pending)
            self.log_written.set_function(lambda: writer.stats.written)
            self.log_lost.set_function(lambda: writer.stats.dropped + writer.stats.rejected)
            return
        # a function gauge is read only by the process it lives in; the other workers read this one's file
        self._writer = writer
        self._refresh_log_gauges()
        threading.Thread(target=self._refresh_log_gauges_until_closed, name="supertiny-metrics-refresh",
                         daemon=True).start()

    def close(self) -> None:
        """At the server's shutdown: in multiprocess mode, write the final log gauges and retire this
        process's live gauges (``livesum`` counts live workers only)."""
        self._stop.set()
        if self.multiprocess_dir is None:
            return
        from prometheus_client import multiprocess

        self._refresh_log_gauges()
        multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)

    def observe(self, route: str, status: int, latency_s: float, outcome: Any = None) -> None:
        """Count one finished request (``outcome`` is the router's Outcome when it was answered)."""
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(latency_s)
        if outcome is None:
            return
        self.overhead.labels(route).observe(max(0.0, latency_s - outcome.model_s))
        self.served.labels(route, outcome.role).inc()
        with self._lock:
            self._shares[route][outcome.role] += 1
        if outcome.escalated:
            self.escalations.labels(route, outcome.reason or "unknown").inc()
        if outcome.fallback:
            self.fallbacks.labels(route, outcome.fallback.get("role", "unknown")).inc()
        tokens = outcome.generation.completion_tokens
        share = outcome.llm_token_share
        if share is not None:
            self.tokens.labels(route, "llm").inc(round(tokens * share))
            self.tokens.labels(route, "tiny").inc(tokens - round(tokens * share))
        else:
            self.tokens.labels(route, outcome.role).inc(tokens)

    def observe_shadow(self, route: str, detail: dict[str, Any]) -> None:
        result = "error" if "error" in detail else "agree" if detail.get("agree") else "disagree"
        self.shadow_agreement.labels(route, result).inc()

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self.multiprocess_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        self._refresh_log_gauges()
        registry = CollectorRegistry()  # fresh each time: the files change under it
        registry.register(_MultiProcessCollector(self.multiprocess_dir))
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def _refresh_log_gauges(self) -> None:
        writer = self._writer
        if writer is None:
            return
        self.log_pending.set(writer.pending)
        self.log_written.set(writer.stats.written)
        self.log_lost.set(writer.stats.dropped + writer.stats.rejected)

    def _refresh_log_gauges_until_closed(self) -> None:
        while not self._stop.wait(LOG_GAUGE_REFRESH_S):
            self._refresh_log_gauges()

    def _share_rows(self) -> list[tuple[str, str, float]]:
        with self._lock:
            rows = []
            for route, tiers in self._shares.items():
                total = sum(tiers.values())
                rows.extend((route, tier, count / total) for tier, count in tiers.items() if total)
            return rows


class _ShareCollector:
    """``supertiny_tier_share{route, tier}``: the fraction of a route's answers each tier served."""

    def __init__(self, rows: Callable[[], list[tuple[str, str, float]]]):
        self._rows = rows

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        yield _share_family(self._rows())


class _MultiProcessCollector:
    """Every worker's metrics from the multiprocess directory, and ``supertiny_tier_share`` from the
    ``supertiny_served`` counts summed over the workers."""

    def __init__(self, path: str):
        from prometheus_client.multiprocess import MultiProcessCollector

        self._files = MultiProcessCollector(None, path)

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        served: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for family in self._files.collect():
            if family.name == "supertiny_served":
                for sample in family.samples:
                    if sample.name == "supertiny_served_total":
                        served[sample.labels["route"]][sample.labels["tier"]] += sample.value
            yield family
        rows = []
        for route, tiers in served.items():
            total = sum(tiers.values())
            rows.extend((route, tier, count / total) for tier, count in tiers.items() if total)
        yield _share_family(rows)


def _share_family(rows: list[tuple[str, str, float]]) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    family = GaugeMetricFamily("supertiny_tier_share", "Fraction of a route's answers served by each tier.",
                               labels=["route", "tier"])
    for route, tier, share in rows:
        family.add_metric([route, tier], share)
    return family
