"""Generate for each evaluation input through a runtime backend, then score against references.

Backend-agnostic (no torch here): the PyTorch reference, ONNX Runtime and TensorRT all plug in
through ``skipdecode.runtime.backend.Backend``, so their numbers come from the same loop.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Sequence

from skipdecode.evaluation.data import Example
from skipdecode.evaluation.metrics import Scores, score
from skipdecode.runtime.generate import GenerationConfig, RowResult, generate_ids
from skipdecode.schedule import Schedule


@dataclass
class EvalResult:
    examples: list[Example]
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

    def finish_reasons(self) -> dict[str, int]:
        return dict(Counter(r.finish_reason for r in self.rows))


def _cut(text: str, stop: Sequence[str]) -> str:
    for s in stop:
        if s in text:
            text = text[: text.index(s)]
    return text


def generate_outputs(backend, tokenizer, prompts: list[str], schedule: Schedule, config: GenerationConfig,
                     batch_size: int, show_progress: bool = True, warmup: bool = True
                     ) -> tuple[list[RowResult], float]:
    """Tokenize, generate (greedy or as configured), decode; returns rows and generation seconds
    (after a short untimed warm-up batch)."""
    from tqdm import tqdm

    ids = [tokenizer.encode(p) for p in prompts]
    stop_check = None
    if config.stop:
        def stop_check(i, toks):
            return any(s in tokenizer.decode(toks) for s in config.stop)
    if warmup:  # first calls allocate and compile kernels; keep that out of the timed run
        generate_ids(backend, ids[:batch_size], schedule, replace(config, max_new_tokens=2), tokenizer.eos_ids,
                     tokenizer.pad_id, batch_size)
    with tqdm(total=len(prompts), desc="eval", unit="input", disable=not show_progress, file=sys.stderr) as bar:
        t0 = time.perf_counter()
        rows = generate_ids(backend, ids, schedule, config, tokenizer.eos_ids, tokenizer.pad_id, batch_size,
                            stop_check, bar.update)
        wall = time.perf_counter() - t0
    for prompt, row in zip(prompts, rows):
        row.prompt = prompt
        row.text = _cut(tokenizer.decode(row.token_ids), config.stop).strip()
    return rows, wall


def evaluate(backend, tokenizer, examples: list[Example], schedule: Schedule, config: GenerationConfig,
             batch_size: int = 8, show_progress: bool = True) -> EvalResult:
    rows, wall = generate_outputs(backend, tokenizer, [e.prompt for e in examples], schedule, config,
                                  batch_size, show_progress)
    scores = score([r.text for r in rows], [e.references for e in examples])
    return EvalResult(examples, rows, scores, schedule, wall)
