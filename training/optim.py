"""The optimizer and its learning-rate schedule: AdamW with decay on matrices only, linear
warm-up then linear decay."""

from __future__ import annotations

from typing import Callable

import torch

from skipdecode.training.config import TrainConfig


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up reaching the peak at step ``warmup``, then linear decay (never exactly 0).

    >>> [round(lr_factor(s, 2, 6), 2) for s in range(6)]
    [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    """
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only (not norms, biases), the usual AdamW recipe."""
    decay, rest = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


FUSED_DEVICES = ("cpu", "cuda")
"""Where AdamW runs as one fused kernel: on a CPU it updates SmolLM2's parameters several times
faster than the default implementation (README, "Cost"; scripts/bench_train_step.py)."""


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, total_steps: int | Callable[[], int]):
    """(AdamW, its LambdaLR schedule) for a run of ``total_steps`` optimizer steps: a count, or a
    function read at each step (a run whose length is fitted to a time budget after warm-up)."""
    device = next(model.parameters()).device.type
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, fused=device in FUSED_DEVICES)
    total = total_steps if callable(total_steps) else lambda: total_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.warmup_steps, total()))
    return optimizer, scheduler
