"""Generate for each evaluation input through a runtime backend, then score against references.

Backend-agnostic (no torch here): the PyTorch reference, ONNX Runtime and TensorRT all plug in
through ``skipdecode.runtime.backend.Backend``, so their numbers come from the same loop.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from skipdecode.data import EvalExample
from skipdecode.evaluation.metrics import Scores, score
from skipdecode.runtime.api import Runtime
from skipdecode.runtime.generate import GenerationConfig, GenerationRun
from skipdecode.schedule import Schedule


@dataclass
class EvalResult(GenerationRun):
    examples: list[EvalExample] = field(default_factory=list)
    scores: Scores | None = None
    schedule: Schedule | None = None

    @property
    def layer_speedup(self) -> float:
        """L / realised mean layers: short outputs end inside the window, below the target."""
        return self.schedule.num_layers / self.mean_layers if self.tokens else 1.0

    def finish_reasons(self) -> dict[str, int]:
        return dict(Counter(r.finish_reason for r in self.rows))


def evaluate(backend, tokenizer, examples: list[EvalExample], schedule: Schedule, config: GenerationConfig,
             batch_size: int = 8, show_progress: bool = True) -> EvalResult:
    """Generate for every example (after an untimed warm-up batch), strip, score."""
    run = Runtime(backend, tokenizer).timed(
        [e.prompt for e in examples], schedule, warmup=True, show_progress=show_progress, desc="eval",
        max_new_tokens=config.max_new_tokens, batch_size=batch_size, sampling=config.sampling, stop=config.stop,
        ignore_eos=config.ignore_eos)
    for row in run.rows:
        row.text = row.text.strip()
    scores = score([r.text for r in run.rows], [e.references for e in examples])
    return EvalResult(run.rows, run.wall_s, examples, scores, schedule)
