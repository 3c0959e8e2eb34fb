"""Batch generation on the engine: add every prompt as a request, step until done.

``generate_ids`` is what eval, bench, calibration and the CLIs call; it is a thin user of
runtime/engine.py (the one generation loop), as the server is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from skipdecode.runtime.backend import Backend
from skipdecode.runtime.engine import Engine, EngineConfig
from skipdecode.runtime.request import Request, RowResult
from skipdecode.runtime.sampling import SamplingConfig
from skipdecode.schedule import Schedule

__all__ = ["GenerationConfig", "GenerationRun", "RowResult", "generate_ids", "length_batches"]


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 64
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    stop: tuple[str, ...] = ()
    """Stop strings: generation ends at the first one, which is cut from the text."""
    ignore_eos: bool = False
    """Benchmarks generate exactly max_new_tokens."""

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class GenerationRun:
    """Rows generated together and the wall time they took: the speed figures every command
    reports (run, generate, eval, the demo) come from here."""

    rows: list[RowResult]
    wall_s: float
    """Wall time of generation alone (tokenizing and scoring excluded)."""

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.rows)

    @property
    def mean_layers(self) -> float:
        """Realised mean n_t over every generated token of every row (token-weighted)."""
        return sum(r.mean_layers * r.tokens for r in self.rows) / max(self.tokens, 1)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def prefill_s(self) -> float:
        """Wall time of the prompts' prefill calls, within ``wall_s``."""
        return sum(r.prefill_s for r in self.rows)

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens over the time outside prefill calls: where the skip schedule acts (a prompt runs
        every layer whatever the schedule, so it dilutes the end-to-end speedup)."""
        decode = self.wall_s - self.prefill_s
        return self.tokens / decode if decode > 0 else 0.0


def length_batches(prompts: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Prompt indices sorted by length (stable), cut into batches: the order requests are added
    in (less padding per prefill), and the static policy's batches."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def generate_ids(
    backend: Backend,
    prompts: Sequence[Sequence[int]],
    schedule: Schedule | Sequence[Schedule],
    config: GenerationConfig,
    eos_ids: Sequence[int],
    pad_id: int,
    batch_size: int = 8,
    progress=None,
    tokenizer=None,
    policy: str = "continuous",
    max_new_tokens: Sequence[int] | None = None,
) -> list[RowResult]:
    """Generate for every prompt with at most ``batch_size`` rows decoding at once; results in
    input order. ``schedule`` is one schedule or one per prompt, ``max_new_tokens`` optionally
    one count per prompt; ``progress(n)`` is called as n requests finish. Stop strings and text
    need ``tokenizer``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not prompts:
        return []
    schedules = [schedule] * len(prompts) if isinstance(schedule, Schedule) else list(schedule)
    news = [config.max_new_tokens] * len(prompts) if max_new_tokens is None else list(max_new_tokens)
    if len(schedules) != len(prompts) or len(news) != len(prompts):
        raise ValueError("one schedule and one max_new_tokens per prompt")
    order = [i for batch in length_batches(prompts, batch_size) for i in batch]
    max_len = max(len(p) for p in prompts) + max(news)
    engine = Engine(backend, eos_ids, pad_id, EngineConfig(batch_size, max_len, policy), schedules[0], tokenizer)
    rows = engine.run([Request(prompts[i], news[i], schedules[i], config.sampling, config.stop, config.ignore_eos)
                       for i in order], progress)
    results: list[RowResult | None] = [None] * len(prompts)
    for i, row in zip(order, rows):
        results[i] = row
    return results  # type: ignore[return-value]
