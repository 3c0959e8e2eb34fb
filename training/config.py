"""The fine-tuning run's settings: one dataclass whose field docstrings are the CLI help."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    out: Path
    """Output folder: checkpoints, log.jsonl, split.json."""
    max_steps: int | None = None
    """Optimizer steps to run (or give epochs)."""
    epochs: float | None = None
    """Passes over the training data (used when max_steps is not given)."""
    batch_size: int = 16
    """Examples per micro-batch (per process)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 1e-4
    """Peak learning rate (AdamW)."""
    warmup_steps: int = 0
    """Linear warm-up from 0 to lr, then linear decay to 0 at the last step."""
    max_minutes: float = 0.0
    """A wall-clock budget for the run (0: none). At the end of warm-up (or after the first step
    without one) the number of steps is cut to what fits in the budget at the pace measured so far,
    never raised above max_steps, so the learning rate still decays to 0 at the last step. The count
    chosen is logged and kept by a resumed run."""
    weight_decay: float = 0.0
    """AdamW weight decay, on matrices only (not norms, biases)."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm (0 disables)."""
    seed: int = 0
    """Seeds data order, schedule sampling and torch."""
    eval_every: int = 0
    """Evaluate every N steps, at step 0 and at the end (0: never)."""
    save_every: int = 0
    """Write a checkpoint every N steps (0: only at the end and on Ctrl-C)."""
    keep_checkpoints: int = 2
    """Numbered checkpoints to keep (the final one is kept as well)."""
    keep_best: bool = False
    """Also keep the weights with the lowest held-out dev loss so far in best/ (rewritten at each
    evaluation that lowers it, step 0 included; needs eval_every and held-out examples). Its
    skipdecode.json records the step and the dev loss; best/ loads, exports and scores like final/."""
    log_every: int = 10
    """Append the mean training loss to log.jsonl every N steps."""
    eval_examples: int = 128
    """Held-out examples for the dev loss (the first N of the eval set)."""
    eval_samples: int = 4
    """Held-out prompts decoded greedily under the schedule at each evaluation."""
    max_new_tokens: int = 64
    """Length cap, in tokens, of the greedy samples decoded at each evaluation."""
    max_length: int = 256
    """Examples longer than this (prompt + target tokens) are dropped, with a count."""
    distill_weight: float = 0.5
    """With a teacher: loss = (1 - w) * CE + w * KL(teacher || student) on target tokens."""
    self_distill: float = 0.0
    """In-place distillation, weight w: a batch drawn below full depth also runs the model at full
    depth without gradients, and its loss becomes (1 - w) * CE + w * KL(full depth || schedule) on
    target tokens, so the model's own full-depth predictions teach its skip path (as slimmable
    networks train their narrow widths). One no-grad full-depth forward more per such batch. 0: off."""
    entry_adapter: str = "0"
    """Entry adapters (models/adapters.py): before each layer a token enters from a skipped layer
    below, its hidden state h becomes h + U V h (this rank; U zero-initialised, so the identity at
    the start) or h + D h (full: a hidden x hidden D, zero-initialised), one per entry layer of the
    schedule family, trained with the model and recorded in the checkpoint. 0: none."""
    mixed_precision: str = "auto"
    """auto, no (fp32), bf16 (autocast, fp32 master weights) or fp16. auto: bf16 on CUDA where
    supported; on a CPU bf16 only where it is native (AMX, AVX512-BF16) and measured clearly faster
    than fp32 at the model's sizes (training/precision.py), else fp32."""
    progress: bool = True
    """tqdm bar on stderr."""

    def __post_init__(self):
        if self.max_steps is None and self.epochs is None:
            raise ValueError("give max_steps or epochs")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        for name in ("batch_size", "grad_accum", "max_length", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "save_every", "log_every", "eval_examples", "eval_samples",
                     "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.keep_best and not (self.eval_every and self.eval_examples):
            raise ValueError("keep_best needs eval_every and eval_examples > 0 (the dev loss it keeps the best of)")
        if self.max_minutes < 0:
            raise ValueError(f"max_minutes must be >= 0, got {self.max_minutes}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError("weight_decay and max_grad_norm must be >= 0")
        for name in ("distill_weight", "self_distill"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        _ = self.entry_adapter_rank  # parsed here so that a bad value fails before anything loads
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")

    def total_steps(self, batches_per_epoch: int) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return max(1, -(-int(self.epochs * batches_per_epoch) // self.grad_accum))

    @property
    def entry_adapter_rank(self) -> int | str | None:
        """``entry_adapter`` parsed: None (none), a rank, or ``full``."""
        from skipdecode.models.adapters import parse_rank  # torch: imported once a run is configured
        return parse_rank(self.entry_adapter)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["out"] = str(self.out)
        return d
