"""Generate for each evaluation input through a runtime backend, then score against references.

Backend-agnostic (no torch here): the PyTorch reference, ONNX Runtime and TensorRT all plug in
through ``skipdecode.runtime.backend.Backend``, so their numbers come from the same loop.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass

from skipdecode.data import EvalExample
from skipdecode.evaluation.metrics import Scores, score
from skipdecode.runtime.api import Runtime
from skipdecode.runtime.generate import GenerationConfig, RowResult
from skipdecode.schedule import Schedule


@dataclass
class EvalResult:
    examples: list[EvalExample]
    rows: list[RowResult]
    """One per example, ``.text`` decoded (stop strings cut)."""
    scores: Scores
    schedule: Schedule
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
    def layer_speedup(self) -> float:
        """L / realised mean layers: short outputs end inside the window, below the target."""
        return self.schedule.num_layers / self.mean_layers if self.tokens else 1.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def prefill_s(self) -> float:
        """Wall time of the prompts' full-depth prefill, within ``wall_s``."""
        return sum(r.prefill_s for r in self.rows)

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens over the decode steps' time alone: where the skip schedule acts (the prefill
        runs every layer whatever the schedule, so it dilutes the end-to-end speedup)."""
        decode = self.wall_s - self.prefill_s
        return self.tokens / decode if decode > 0 else 0.0

    def finish_reasons(self) -> dict[str, int]:
        return dict(Counter(r.finish_reason for r in self.rows))


def generate_outputs(backend, tokenizer, prompts: list[str], schedule: Schedule, config: GenerationConfig,
                     batch_size: int, show_progress: bool = True, warmup: bool = True
                     ) -> tuple[list[RowResult], float]:
    """Generate through ``Runtime``; returns rows (text stripped) and generation seconds, after
    a short untimed warm-up batch."""
    from tqdm import tqdm

    rt = Runtime(backend, tokenizer)
    kw = dict(sampling=config.sampling, stop=config.stop, ignore_eos=config.ignore_eos)
    if warmup:  # first calls allocate and compile kernels; keep that out of the timed run
        rt.generate(prompts[:batch_size], schedule, max_new_tokens=2, batch_size=batch_size, **kw)
    with tqdm(total=len(prompts), desc="eval", unit="input", disable=not show_progress, file=sys.stderr) as bar:
        t0 = time.perf_counter()
        rows = rt.generate(prompts, schedule, max_new_tokens=config.max_new_tokens, batch_size=batch_size,
                           progress=bar.update, **kw)
        wall = time.perf_counter() - t0
    for row in rows:
        row.text = row.text.strip()
    return rows, wall


def evaluate(backend, tokenizer, examples: list[EvalExample], schedule: Schedule, config: GenerationConfig,
             batch_size: int = 8, show_progress: bool = True) -> EvalResult:
    rows, wall = generate_outputs(backend, tokenizer, [e.prompt for e in examples], schedule, config,
                                  batch_size, show_progress)
    scores = score([r.text for r in rows], [e.references for e in examples])
    return EvalResult(examples, rows, scores, schedule, wall)
