"""Open-loop serving benchmark on the engine: Poisson arrivals (plus a saturating closed loop),
in the same process, against the static batcher and continuous batching at several speedups.

Workloads:
- ``chat``: generation-heavy; prompts of 32-256 random tokens, outputs of 128-512, drawn from a
  fixed seed; EOS is ignored (speed does not depend on weights).
- ``e2e``: E2E test MR prompts, output lengths drawn from the references' token lengths.

A run adds each request when its arrival time has passed, steps the engine, and records each
request's time to first token (TTFT) and time per output token after it (TPOT). Rates are
requests/s; ``inf`` sends everything at once (the saturating closed loop, the peak).
Imports neither torch nor transformers.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from skipdecode.runtime.engine import Engine, EngineConfig
from skipdecode.runtime.request import Request
from skipdecode.schedule import Schedule

WORKLOADS = ("chat", "e2e")
MODES = ("static", "continuous")


@dataclass(frozen=True)
class Job:
    prompt: tuple[int, ...]
    new_tokens: int


def chat_jobs(n: int, vocab: int, seed: int = 0, prompt=(32, 256), output=(128, 512)) -> list[Job]:
    rng = np.random.default_rng(seed)
    low = min(100, vocab // 4)
    return [Job(tuple(rng.integers(low, vocab, int(rng.integers(prompt[0], prompt[1] + 1))).tolist()),
                int(rng.integers(output[0], output[1] + 1))) for _ in range(n)]


def e2e_jobs(n: int, prompts: Sequence[list[int]], output_lengths: Sequence[int], seed: int = 0) -> list[Job]:
    rng = np.random.default_rng(seed)
    return [Job(tuple(prompts[int(rng.integers(len(prompts)))]), int(max(1, output_lengths[int(rng.integers(len(output_lengths)))])))
            for _ in range(n)]


@dataclass
class ServeRecord:
    mode: str
    speedup: str
    """'1', '3', ... or 'mix' (each request draws one of the mix's speedups)."""
    rate: float
    """Requests/s offered; inf: all at once."""
    completed: int
    output_tokens: int
    output_tokens_per_s: float
    requests_per_s: float
    ttft_p50: float
    ttft_p99: float
    tpot_p50: float
    tpot_p99: float
    mean_layers: float
    """Token-weighted mean layers per generated token."""
    wall_s: float
    prefill_share: float
    """Share of the wall time spent in prefill calls."""


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (nan for no samples)."""
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q / 100 * len(xs)) - 1))]


def arrival_times(n: int, rate: float, seed: int = 0) -> np.ndarray:
    """Seconds after the start at which each of ``n`` requests arrives: Poisson at ``rate``
    requests/s, the first at 0; all at 0 for ``inf``. The in-process and HTTP runs share it."""
    rng = np.random.default_rng(seed + 1)
    gaps = rng.exponential(1 / rate, n) if math.isfinite(rate) else np.zeros(n)
    return np.cumsum(gaps) - (gaps[0] if len(gaps) else 0)


def make_record(mode: str, label: str, rate: float, wall: float, tokens: Sequence[int], ttfts: Sequence[float],
                tpots: Sequence[float], mean_layers: Sequence[float], prefill_s: float) -> ServeRecord:
    """One record from the completed requests' figures (one entry per request in ``tokens``,
    ``ttfts`` and ``mean_layers``; ``tpots`` skips requests of one token)."""
    total = sum(tokens)
    layers = sum(m * t for m, t in zip(mean_layers, tokens)) / max(total, 1)
    return ServeRecord(mode, label, rate, len(tokens), total, round(total / wall, 2), round(len(tokens) / wall, 4),
                       round(percentile(list(ttfts), 50), 4), round(percentile(list(ttfts), 99), 4),
                       round(percentile(list(tpots), 50), 5), round(percentile(list(tpots), 99), 5),
                       round(layers, 3), round(wall, 4), round(prefill_s / wall, 4))


def serve(backend, jobs: Sequence[Job], schedules: Sequence[Schedule], mode: str, rate: float, max_rows: int,
          max_len: int, seed: int = 0, timeout_s: float = 600.0, label: str = "") -> ServeRecord:
    """Run ``jobs`` (with ``schedules``, one per job) arriving at ``rate`` requests/s through
    one engine; requests not done after ``timeout_s`` are cancelled and not counted."""
    arrivals = arrival_times(len(jobs), rate, seed)
    engine = Engine(backend, (), 0, EngineConfig(max_rows=max_rows, max_len=max_len, policy=mode), schedules[0])
    ids: list[str] = []
    t0 = time.perf_counter()
    nxt = 0
    while nxt < len(jobs) or engine.has_work:
        now = time.perf_counter() - t0
        if now > timeout_s:
            for rid in ids:
                engine.cancel(rid)
            engine.step()
            break
        while nxt < len(jobs) and arrivals[nxt] <= now:
            j = jobs[nxt]
            ids.append(engine.add(Request(j.prompt, j.new_tokens, schedules[nxt], ignore_eos=True)))
            nxt += 1
        if engine.has_work:
            engine.step()
        elif nxt < len(jobs):
            time.sleep(max(0.0, arrivals[nxt] - now))
    wall = time.perf_counter() - t0
    results = [r for r in (engine.pop_result(i) for i in ids) if r is not None and r.finish_reason != "cancelled"]
    return make_record(mode, label, rate, wall, [r.tokens for r in results], [r.ttft_s for r in results],
                       [r.tpot_s for r in results if r.tpot_s is not None], [r.mean_layers for r in results],
                       sum(r.prefill_s for r in results))


def range_overhead(backend, B: int, schedule: Schedule, prompt: Sequence[int], new_tokens: int = 96,
                   stagger: int = 4, repeats: int = 3) -> dict:
    """Cost of the row-range mechanism: the same B requests stepping in lockstep (each layer runs
    all rows or none) against arriving ``stagger`` steps apart (each row at its own step, so
    layers run partial ranges). Only decode steps with all B rows count (equal batch size), and
    work differs, so both are measured in row-layers per second (each row counts the layers it
    ran). Needs ``new_tokens > stagger * (B - 1)``. Returns both rates and the overhead."""
    if new_tokens <= stagger * (B - 1):
        raise ValueError(f"new_tokens ({new_tokens}) must exceed stagger * (B - 1) = {stagger * (B - 1)}: "
                         "no step would hold every row")

    def rate(gap: int) -> float:
        best = 0.0
        for _ in range(repeats):
            engine = Engine(backend, (), 0, EngineConfig(max_rows=B, max_len=len(prompt) + new_tokens), schedule)
            pending = [Request(prompt, new_tokens, schedule, ignore_eos=True) for _ in range(B)]
            step, decode_s, row_layers = 0, 0.0, 0
            while pending or engine.has_work:
                while pending and step >= gap * (B - len(pending)):
                    engine.add(pending.pop(0))
                plan = engine.schedule()
                full = plan.prefill is None and plan.decode is not None and len(plan.decode.requests) == B
                t0 = time.perf_counter()
                out = engine.execute(plan)
                if full:
                    decode_s += time.perf_counter() - t0
                    row_layers += sum(len(s) for s in plan.decode.layer_sets)
                engine.update(plan, *out)
                step += 1
            best = max(best, row_layers / decode_s)
        return best

    lock, ranged = rate(0), rate(stagger)
    return {"batch": B, "schedule": schedule.describe(), "lockstep_row_layers_per_s": round(lock, 1),
            "ranges_row_layers_per_s": round(ranged, 1), "overhead": round(1 - ranged / lock, 4)}


def peak_rates(peak_rps: float, fractions: Sequence[float] = (0.5, 0.8)) -> list[float]:
    """Poisson rates below a measured saturating throughput (requests/s)."""
    return [round(peak_rps * f, 3) for f in fractions]


def records_table(records: Sequence[ServeRecord]) -> str:
    head = "| mode | speedup | rate (req/s) | completed | output tok/s | req/s | TTFT p50 / p99 (s) | TPOT p50 / p99 (ms) | mean layers | prefill share |"
    rows = [head, "|" + "---|" * 10]
    for r in records:
        rows.append(f"| {r.mode} | {r.speedup} | {r.rate:g} | {r.completed} | {r.output_tokens_per_s:.1f} | "
                    f"{r.requests_per_s:.3f} | {r.ttft_p50:.2f} / {r.ttft_p99:.2f} | "
                    f"{1000 * r.tpot_p50:.1f} / {1000 * r.tpot_p99:.1f} | {r.mean_layers:.2f} | {r.prefill_share:.2f} |")
    return "\n".join(rows)


def to_dicts(records: Sequence[ServeRecord]) -> list[dict]:
    return [asdict(r) for r in records]


def plot(records: Sequence[ServeRecord], out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    groups: dict[tuple[str, str], list[ServeRecord]] = {}
    for r in records:
        groups.setdefault((r.mode, r.speedup), []).append(r)
    for (mode, sp), rs in groups.items():
        rs = sorted(rs, key=lambda r: r.output_tokens_per_s)
        ax.plot([r.output_tokens_per_s for r in rs], [1000 * r.tpot_p50 for r in rs], "o-",
                label=f"{mode}, {sp}x" if sp != "mix" else f"{mode}, mix")
    ax.set_xlabel("output tokens/s")
    ax.set_ylabel("TPOT p50 (ms)")
    ax.set_title("latency against throughput (each point a request rate)")
    ax.legend()
    fig.savefig(out, dpi=120)
    plt.close(fig)


