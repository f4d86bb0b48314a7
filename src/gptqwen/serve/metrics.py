"""Prometheus metrics of the server (`GET /metrics`, text format), through `prometheus_client`.

Counters: requests by endpoint and status, prompt and generated tokens. Gauges read from the scheduler at
scrape time: waiting and running requests, the running batch's capacity, KV-cache slots per row, decode steps.
Histograms: time to first token, time between tokens, whole-request latency.
"""

from __future__ import annotations

from gptqwen.errors import require
from gptqwen.infer.scheduler import Scheduler

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """One registry per server, so several apps in one process (tests) do not share counts."""

    def __init__(self, scheduler: Scheduler) -> None:
        pc = require("prometheus_client", "serve", "the server's /metrics")
        pc.disable_created_metrics()  # no *_created series: they double the page for nothing a dashboard uses
        self._pc, self.scheduler = pc, scheduler
        self.registry = r = pc.CollectorRegistry()
        self.requests = pc.Counter("gptqwen_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                   registry=r)
        self.prompt_tokens = pc.Counter("gptqwen_prompt_tokens", "prompt tokens of admitted requests", registry=r)
        self.generated_tokens = pc.Counter("gptqwen_generated_tokens", "tokens generated", registry=r)
        self.ttft = pc.Histogram("gptqwen_time_to_first_token_seconds", "submission to first token", buckets=_LATENCY,
                                 registry=r)
        self.itl = pc.Histogram("gptqwen_inter_token_latency_seconds", "time between a request's tokens",
                                buckets=_LATENCY, registry=r)
        self.latency = pc.Histogram("gptqwen_request_latency_seconds", "submission to last token", buckets=_LATENCY,
                                    registry=r)
        gauges = {"waiting": "requests waiting for a slot", "running": "requests in the running batch",
                  "prefilling": "requests being prefilled", "capacity": "rows of the running batch's KV cache",
                  "cache_slots": "KV-cache slots per row", "steps": "decode steps since start"}
        self._gauges = {k: pc.Gauge(f"gptqwen_scheduler_{k}", v, registry=r) for k, v in gauges.items()}

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of a scrape."""
        stats = self.scheduler.stats()
        for k, g in self._gauges.items():
            g.set(getattr(stats, k))
        return self._pc.generate_latest(self.registry), self._pc.CONTENT_TYPE_LATEST
