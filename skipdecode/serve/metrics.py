"""Prometheus metrics of one server (its own registry, so several apps can share a process).

The engine thread writes them after every step; /metrics reads them. Rates and means over the
last ``window_s`` seconds are computed when scraped; the counters behind them are exported too
(``rate(skipdecode_output_tokens_total[1m])`` is the Prometheus way)."""

from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    def __init__(self, window_s: float = 10.0):
        self.registry = r = CollectorRegistry()
        self.window_s = window_s
        self._lock = threading.Lock()
        self._tokens: deque[tuple[float, int]] = deque()  # (time, tokens of one step)
        self._finished: deque[tuple[float, int, float]] = deque()  # (time, tokens, layers run for them)
        self.queue_depth = Gauge("skipdecode_queue_depth", "Requests waiting for a KV row", registry=r)
        self.running_rows = Gauge("skipdecode_running_rows", "KV rows decoding (requests running)", registry=r)
        self.output_tokens = Counter("skipdecode_output_tokens", "Generated tokens", registry=r)
        self.layers = Counter("skipdecode_layers", "Decoder layers run for the tokens of finished requests",
                              registry=r)
        self.requests = Counter("skipdecode_requests", "Finished engine requests", ["finish_reason"], registry=r)
        self.errors = Counter("skipdecode_http_errors", "Requests answered with an error", ["status"], registry=r)
        self.ttft = Histogram("skipdecode_time_to_first_token_seconds", "Arrival to first token",
                              buckets=TTFT_BUCKETS, registry=r)
        self.tpot = Histogram("skipdecode_time_per_output_token_seconds", "Mean seconds per token after the first",
                              buckets=TPOT_BUCKETS, registry=r)
        Gauge("skipdecode_output_tokens_per_second", f"Generated tokens/s over the last {window_s:g} s",
              registry=r).set_function(self.tokens_per_s)
        Gauge("skipdecode_mean_layers_per_token", f"Mean layers per token of requests finished in the last "
              f"{window_s:g} s", registry=r).set_function(self.mean_layers)
        self.ready = Gauge("skipdecode_ready", "1 once the graphs are loaded and verified", registry=r)

    # ---- written by the engine thread ----------------------------------------------------------
    def step(self, tokens: int, waiting: int, running: int) -> None:
        self.queue_depth.set(waiting)
        self.running_rows.set(running)
        if tokens:
            self.output_tokens.inc(tokens)
            with self._lock:
                self._tokens.append((time.monotonic(), tokens))

    def finished(self, result) -> None:
        """One RowResult."""
        self.requests.labels(result.finish_reason).inc()
        layers = result.mean_layers * result.tokens
        self.layers.inc(layers)
        if result.tokens and result.finish_reason != "cancelled":
            self.ttft.observe(max(result.ttft_s, 0.0))
            if result.tpot_s is not None:
                self.tpot.observe(result.tpot_s)
        with self._lock:
            self._finished.append((time.monotonic(), result.tokens, layers))

    # ---- read when scraped ----------------------------------------------------------------------
    def _trim(self) -> float:
        now = time.monotonic()
        for q in (self._tokens, self._finished):
            while q and q[0][0] < now - self.window_s:
                q.popleft()
        return now

    def tokens_per_s(self) -> float:
        with self._lock:
            self._trim()
            return sum(n for _, n in self._tokens) / self.window_s

    def mean_layers(self) -> float:
        with self._lock:
            self._trim()
            tokens = sum(n for _, n, _ in self._finished)
            return sum(l for *_, l in self._finished) / tokens if tokens else 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)
