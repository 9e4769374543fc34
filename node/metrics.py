"""Prometheus metrics of one node, in a registry per app (tests run many apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "loranode_requests", "API requests by endpoint and HTTP status", ["endpoint", "status"], registry=r
        )
        self.tokens = Counter("loranode_tokens", "Tokens served by kind (prompt, completion)", ["kind"], registry=r)
        self.latency = Histogram(
            "loranode_request_latency_seconds",
            "Request latency by endpoint",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "loranode_time_to_first_token_seconds",
            "Time to the first streamed token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.payment_rejections = Counter(
            "loranode_payment_rejections", "Requests refused with 402 by reason", ["reason"], registry=r
        )
        self.receipts_signed = Counter("loranode_receipts_signed", "Receipts signed by this node", registry=r)
        self.pending_receipts = Gauge("loranode_pending_receipts", "Signed receipts not yet committed on chain", registry=r)
        self.settlement_lag = Gauge(
            "loranode_settlement_lag_seconds", "Age of the oldest receipt not yet committed on chain", registry=r
        )
        self._sources: dict[str, object] = {}
        r.register(_StatsCollector(self))

    def bind_engine_stats(self, stats_fn) -> None:
        """Expose the engine's own counters (adapter loads/evictions, queue) at scrape time."""
        self.bind_stats("engine", stats_fn)

    def bind_stats(self, prefix: str, stats_fn) -> None:
        """Expose a component's numeric `stats_fn()` dict as `loranode_<prefix>_<key>` at scrape time."""
        self._sources[prefix] = stats_fn

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StatsCollector:
    """Reads each bound `stats()` on each scrape (engine, lifecycle): numbers only; counters by name."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self._m = metrics

    def describe(self):
        return []

    def collect(self):
        for prefix, fn in list(self._m._sources.items()):
            try:
                stats = fn()
            except Exception:  # noqa: BLE001 - a scrape must never fail because a component is shutting down
                continue
            yield from self._families(prefix, stats)

    def _families(self, prefix: str, stats: dict):
        for key, value in _flatten(stats):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            name = f"loranode_{prefix}_" + "".join(c if c.isalnum() else "_" for c in key).lower()
            if _is_counter(key):
                yield CounterMetricFamily(name.removesuffix("_total"), f"{prefix} stat {key}", value=value)
            else:
                yield GaugeMetricFamily(name, f"{prefix} stat {key}", value=value)


_COUNTER_SUFFIXES = ("loads", "unloads", "evictions", "failures", "_tokens", "_steps")


def _is_counter(key: str) -> bool:
    """Monotonic engine counters (adapter loads/evictions, tokens, requests by outcome)."""
    return key.startswith("requests_") or key.endswith(_COUNTER_SUFFIXES)


def _flatten(d: dict, prefix: str = ""):
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _flatten(v, key + "_")
        else:
            yield key, v
