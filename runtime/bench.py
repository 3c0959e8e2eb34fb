"""Decode throughput of every backend under skip schedules, against the ideal from the cost model.

A *runner* generates a fixed number of tokens (EOS ignored) for a batch of equal-length prompts
and reports the time to the first token and the decode time after it. Layer-chaining backends
(the PyTorch reference, ONNX Runtime, TensorRT) run through the shared generation loop, so every
decode forward is timed and ``seconds = fixed + per_layer * n_layers`` is fitted per batch size:
the slope is the cost of one layer call (for ONNX Runtime, compute plus chaining overhead).
Monolithic baselines (transformers' ``generate``, ONNX Runtime GenAI) run full depth only.

tokens/s counts the tokens after each row's first one over the time after the first token
(decode throughput; the prompt is the same work for every schedule); ``ms_per_step`` is the
time of one decode step (each step emits ``batch_size`` tokens). Speedups are measured within
one backend and one run: a schedule's tokens/s over the same backend's full-depth tokens/s.
This module imports neither torch nor transformers.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from skipdecode.io import atomic_write_text
from skipdecode.runtime.costmodel import Machine, ModelShape, decode_layers, decode_seconds, ideal_speedup
from skipdecode.runtime.engine import Engine, EngineConfig
from skipdecode.runtime.request import Request
from skipdecode.schedule import DECAYS, Schedule
from skipdecode.versions import package_versions

REFERENCE = "ort-genai"
"""The baseline the table compares every row with (the best monolithic ONNX deployment)."""


@dataclass(frozen=True)
class BenchConfig:
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    """Rows generated together; every batch size is measured in turn."""
    speedups: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0)
    """Target speedups; 1 (full depth, the base of measured speedups) is always measured."""
    prompt_len: int = 32
    """Random prompt tokens per row."""
    new_tokens: int = 32
    """Tokens generated per row, EOS ignored."""
    window: int | None = None
    """Steps over which n_t decays (default: new_tokens, so the target holds over the run)."""
    warmup_layers: int = 1
    """Bottom layers every token runs."""
    decay: str = "linear"
    """How n_t falls over the window: linear or power."""
    warmup: int = 1
    """Untimed runs of every configuration before the timed ones."""
    repeats: int = 3
    """Timed runs of every configuration; records report medians."""
    seed: int = 0
    """Seed of the random prompt ids."""
    static: bool = False
    """Constant schedules (static layer dropping): round(L / s) layers at every step."""

    def __post_init__(self):
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch sizes must be >= 1, got {self.batch_sizes}")
        if not self.speedups or min(self.speedups) < 1:
            raise ValueError(f"speedups must be >= 1, got {self.speedups}")
        if self.prompt_len < 1:
            raise ValueError(f"prompt_len must be >= 1, got {self.prompt_len}")
        if self.new_tokens < 2:
            raise ValueError(f"new_tokens must be >= 2 (one decode step at least), got {self.new_tokens}")
        if self.warmup < 0 or self.repeats < 1:
            raise ValueError(f"need warmup >= 0 and repeats >= 1, got {self.warmup}, {self.repeats}")
        if self.decay not in DECAYS:
            raise ValueError(f"decay must be one of {DECAYS}, got {self.decay!r}")

    @property
    def all_speedups(self) -> tuple[float, ...]:
        return tuple(sorted({1.0, *map(float, self.speedups)}))

    def schedules(self, num_layers: int) -> dict[float, Schedule]:
        """Target speedup -> schedule (raises ValueError for a speedup the depth cannot reach)."""
        window = self.window or self.new_tokens

        def make(s: float) -> Schedule:
            if s == 1:
                return Schedule.full(num_layers)
            if self.static:
                return Schedule.constant(num_layers, max(self.warmup_layers, round(num_layers / s)), self.warmup_layers)
            return Schedule.for_speedup(num_layers, s, window, self.warmup_layers, self.decay)

        return {s: make(s) for s in self.all_speedups}


@dataclass
class RunTiming:
    ttft_s: float
    """Prompt forward and first token."""
    decode_s: float
    """Every step after the first token."""
    tokens: int
    """Generated tokens over all rows."""
    steps: list[tuple[int, float]] = field(default_factory=list)
    """(layers run, seconds) of each decode forward; layer-chaining backends only."""


class Runner(Protocol):
    name: str
    skips: bool
    """True if the runner can run skip schedules (layer chaining); else full depth only."""

    def run(self, prompts: np.ndarray, schedule: Schedule, new_tokens: int) -> RunTiming:
        """Generate exactly ``new_tokens`` per row of ``prompts`` (B, P) int64."""


class _TimedBackend:
    """Passes calls through to a Backend, timing every decode call."""

    def __init__(self, inner):
        self.inner = inner
        self.name, self.num_layers, self.max_positions = inner.name, inner.num_layers, inner.max_positions
        self.calls, self.capture = inner.calls, None
        self.steps: list[tuple[int, float]] = []

    def allocate(self, rows: int, max_len: int) -> None:
        self.inner.allocate(rows, max_len)
        self.steps = []

    def prefill(self, start, ids, lengths, layers):
        return self.inner.prefill(start, ids, lengths, layers)

    def decode(self, ids, positions, ranges):
        t0 = time.perf_counter()
        logits = self.inner.decode(ids, positions, ranges)
        self.steps.append((sum(a < b for a, b in ranges), time.perf_counter() - t0))
        return logits

    def move(self, src, dst, length, layers):
        self.inner.move(src, dst, length, layers)


class LoopRunner:
    """A layer-chaining Backend driven by the engine (greedy, EOS ignored, every row admitted at
    once, so the rows step in lockstep)."""

    skips = True

    def __init__(self, backend, name: str | None = None):
        self.backend = _TimedBackend(backend)
        self.name = name or backend.name

    def run(self, prompts: np.ndarray, schedule: Schedule, new_tokens: int) -> RunTiming:
        B, P = prompts.shape
        engine = Engine(self.backend, (), 0, EngineConfig(max_rows=B, max_len=P + new_tokens), schedule)
        for p in prompts.tolist():
            engine.add(Request(p, new_tokens, schedule, ignore_eos=True))
        t0 = time.perf_counter()
        first = None
        tokens = 0
        while engine.has_work:
            tokens += len(engine.step())
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        return RunTiming(first - t0, end - first, tokens, list(self.backend.steps))


def make_prompts(vocab_size: int, batch_size: int, prompt_len: int, seed: int = 0) -> np.ndarray:
    """Random ids (B, P) int64 above the special tokens; every backend gets the same ones."""
    low = min(100, vocab_size // 4)
    return np.random.default_rng(seed).integers(low, vocab_size, size=(batch_size, prompt_len), dtype=np.int64)


def fit_layer_cost(steps: Sequence[tuple[int, float]]) -> tuple[float, float] | None:
    """Least squares ``seconds = fixed + per_layer * layers`` over the median time of each layer
    count -> (fixed, per_layer) in seconds, or None without two different layer counts.

    >>> fit_layer_cost([(2, 0.5), (4, 0.9), (6, 1.3)])
    (0.1, 0.2)
    """
    by_layers: dict[int, list[float]] = {}
    for n, s in steps:
        by_layers.setdefault(n, []).append(s)
    if len(by_layers) < 2:
        return None
    # the median per layer count first: one step delayed by another process moves nothing
    n = np.array(sorted(by_layers), dtype=np.float64)
    s = np.array([statistics.median(by_layers[k]) for k in sorted(by_layers)])
    per_layer, fixed = np.polyfit(n, s, 1)
    return round(float(fixed), 12), round(float(per_layer), 12)


@dataclass
class Record:
    backend: str
    batch_size: int
    speedup: float
    """The target; ``mean_layers`` is what the schedule really ran."""
    tokens_per_s: float
    ms_per_step: float
    mean_layers: float
    """Mean layers of the decode forwards."""
    ideal_speedup: float
    measured_speedup: float
    efficiency: float
    tokens: int
    """Tokens generated per repeat (batch_size * new_tokens)."""
    ttft_ms: float
    e2e_tokens_per_s: float
    """All generated tokens over the whole run, prompt included."""
    roofline_tokens_per_s: float
    """The cost model's decode tokens/s for this schedule on this machine."""
    schedule: str
    us_per_layer_call: float | None = None
    fixed_ms_per_step: float | None = None
    """Embed, LM head, sampling and loop of one decode step (the fit's intercept)."""
    ideal_us_per_layer: float | None = None
    vs_ort_genai: float | None = None
    """tokens/s over ONNX Runtime GenAI's full-depth tokens/s at the same batch size."""
    note: str = ""


def _summarize(runner: Runner, B: int, s: float, schedule: Schedule, timings: list[RunTiming], base: float,
               shape: ModelShape, config: BenchConfig, machine: Machine, fit) -> Record:
    counts = {t.tokens for t in timings}
    if len(counts) != 1:
        raise RuntimeError(f"{runner.name}: generated token counts differ between repeats: {sorted(counts)}")
    tokens = counts.pop()
    N, P = config.new_tokens, config.prompt_len
    rates = [(t.tokens - B) / t.decode_s for t in timings]
    tps = statistics.median(rates)
    layers = decode_layers(schedule, N)
    ideal = ideal_speedup(shape, schedule, B, P, N, machine)
    measured = tps / base if base else 1.0
    per_layer = None if fit is None else fit[1]
    ideal_layer = machine.seconds(*shape.layer_cost(B, P + N // 2))
    return Record(
        backend=runner.name, batch_size=B, speedup=s, tokens_per_s=round(tps, 2),
        ms_per_step=round(1000 * B / tps, 3),  # one decode step emits B tokens
        mean_layers=round(sum(layers) / len(layers), 3), ideal_speedup=round(ideal, 3),
        measured_speedup=round(measured, 3), efficiency=round(measured / ideal, 3), tokens=tokens,
        ttft_ms=round(1000 * statistics.median(t.ttft_s for t in timings), 2),
        e2e_tokens_per_s=round(statistics.median(t.tokens / (t.ttft_s + t.decode_s) for t in timings), 2),
        roofline_tokens_per_s=round(B * (N - 1) / decode_seconds(shape, schedule, B, P, N, machine), 1),
        schedule=schedule.describe(),
        us_per_layer_call=None if per_layer is None else round(1e6 * per_layer, 1),
        fixed_ms_per_step=None if fit is None else round(1e3 * fit[0], 3),
        ideal_us_per_layer=round(1e6 * ideal_layer, 1),
        note=getattr(runner, "note", ""),
    )


def run_bench(runners: Sequence[Runner], shape: ModelShape, config: BenchConfig, machine: Machine = Machine(),
              progress: Callable[[str], None] | None = None) -> list[Record]:
    """Measure every runner at every batch size (and every speedup where it can skip).

    Within a runner and batch size the speedups are interleaved repeat by repeat, so drift
    in a shared machine's load hits every schedule alike; runners run one after the other
    (no thread pool of one runtime spinning while another one runs).
    """
    schedules = config.schedules(shape.num_layers)
    records: list[Record] = []
    for B in config.batch_sizes:
        prompts = make_prompts(shape.vocab_size, B, config.prompt_len, config.seed)
        for runner in runners:
            speedups = config.all_speedups if runner.skips else (1.0,)
            timings: dict[float, list[RunTiming]] = {s: [] for s in speedups}
            for i in range(config.warmup + config.repeats):
                for s in speedups:
                    t = runner.run(prompts, schedules[s], config.new_tokens)
                    if i >= config.warmup:
                        timings[s].append(t)
                    if progress:
                        progress(f"{runner.name} B={B} {s:g}x")
            fit = fit_layer_cost([step for ts in timings.values() for t in ts for step in t.steps])
            base = statistics.median((t.tokens - B) / t.decode_s for t in timings[1.0])
            records += [_summarize(runner, B, s, schedules[s], timings[s], base, shape, config, machine, fit)
                        for s in speedups]
    reference = {r.batch_size: r.tokens_per_s for r in records if r.backend == REFERENCE}
    for r in records:
        if r.batch_size in reference:
            r.vs_ort_genai = round(r.tokens_per_s / reference[r.batch_size], 3)
    return records


def count_runs(runners: Sequence[Runner], config: BenchConfig) -> int:
    per = sum(len(config.all_speedups) if r.skips else 1 for r in runners)
    return per * len(config.batch_sizes) * (config.warmup + config.repeats)


# ---- reporting --------------------------------------------------------------------------------
def machine_info() -> dict:
    """What the numbers were measured on (versions read from metadata: nothing is imported)."""
    from skipdecode.cpu import cpu_model

    cpu = cpu_model()
    versions = package_versions(("numpy", "onnxruntime", "onnxruntime-genai", "torch", "transformers", "tensorrt"))
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "loadavg_1m": None if load is None else round(load[0], 2), "versions": versions}


COLUMNS = [("backend", "backend", "{}"), ("batch", "batch_size", "{}"), ("speedup", "speedup", "{:g}x"),
           ("layers", "mean_layers", "{:.2f}"), ("tok/s", "tokens_per_s", "{:.1f}"),
           ("ms/step", "ms_per_step", "{:.2f}"), ("measured", "measured_speedup", "{:.2f}x"),
           ("ideal", "ideal_speedup", "{:.2f}x"), ("eff", "efficiency", "{:.2f}"),
           ("x ort-genai", "vs_ort_genai", "{:.2f}x"), ("us/layer", "us_per_layer_call", "{:.0f}"),
           ("fixed ms", "fixed_ms_per_step", "{:.2f}"), ("ttft ms", "ttft_ms", "{:.0f}")]


def format_table(records: Sequence[Record]) -> str:
    cols = [c for c in COLUMNS if any(getattr(r, c[1]) is not None for r in records)]
    rows = [[c[0] for c in cols]]
    for r in records:
        rows.append(["-" if getattr(r, key) is None else fmt.format(getattr(r, key)) for _, key, fmt in cols])
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def write_json(path: str | Path, records: Sequence[Record], config: BenchConfig, machine: Machine,
               model: str, info: dict | None = None) -> None:
    doc = {"model": model, "settings": asdict(config), "cost_model": asdict(machine),
           "machine": info or machine_info(), "records": [asdict(r) for r in records]}
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")


def plot_records(records: Sequence[Record], path: str | Path, title: str = "") -> None:
    """tokens/s against batch size, one line per backend and speedup (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    series: dict[tuple[str, float], list[Record]] = {}
    for r in records:
        series.setdefault((r.backend, r.speedup), []).append(r)
    backends = list(dict.fromkeys(r.backend for r in records))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", "-.", ":", (0, (5, 1)), (0, (1, 1))]
    speedups = sorted({r.speedup for r in records})
    for (backend, s), rs in series.items():
        rs = sorted(rs, key=lambda r: r.batch_size)
        label = backend if backend in ("hf", REFERENCE) else f"{backend} {s:g}x"
        ax.plot([r.batch_size for r in rs], [r.tokens_per_s for r in rs], marker="o",
                color=colors[backends.index(backend) % len(colors)],
                linestyle=styles[speedups.index(s) % len(styles)], label=label)
    batch_sizes = sorted({r.batch_size for r in records})
    ax.set_xscale("log", base=2)
    ax.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
    rates = [r.tokens_per_s for r in records if r.tokens_per_s > 0]
    if rates and max(rates) / min(rates) > 30:  # backends orders of magnitude apart
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("batch size")
    ax.set_ylabel("decode tokens/s")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
