"""The periodic evaluation: dev loss under a schedule, and greedy samples decoded by the same
generation loop the deployed runtime uses (so what the log shows is what users will get)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from skipdecode.data import Example
from skipdecode.models.backend import TorchBackend
from skipdecode.runtime.api import Runtime
from skipdecode.schedule import Schedule
from skipdecode.training.batches import IGNORE_INDEX, Batch, collate


def spread(items: Sequence, n: int) -> list:
    """``n`` items evenly spaced over ``items`` (eval files list an MR's references together, so
    the first n would cover a handful of MRs)."""
    if n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


def batch_loss(model, batch: Batch, schedule: Schedule | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean CE over target tokens, and the logits of the columns that predict them.

    ``logits_start = prompt_len - 1`` runs the LM head only from the last prompt column on: the
    head is the largest matrix of a small model and every earlier column has no loss."""
    P = batch.prompt_len
    logits, loss = model(batch.input_ids, batch.attention_mask, labels=batch.labels, schedule=schedule,
                         prompt_len=P, logits_start=P - 1)
    return loss, logits  # logits: (B, T - P + 1, V)


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target_labels: torch.Tensor) -> torch.Tensor:
    """Mean KL(teacher || student) over target tokens.

    Both logits start at column prompt_len - 1 (B, N + 1, V); ``target_labels`` are labels[:, P:]
    (B, N), so logits[:, j] predicts target_labels[:, j]."""
    keep = target_labels != IGNORE_INDEX  # (B, N)
    s = F.log_softmax(student_logits[:, :-1].float(), dim=-1)[keep]  # (K, V)
    t = F.log_softmax(teacher_logits[:, :-1].float(), dim=-1)[keep]  # (K, V)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


@torch.no_grad()
def dev_loss(model, pairs: Sequence[tuple[list[int], list[int]]], schedule: Schedule, batch_size: int,
             pad_id: int, device, autocast=None) -> float:
    """Token-weighted mean CE over ``pairs`` (batched by length)."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = collate([pairs[i] for i in order[start:start + batch_size]], pad_id).to(device)
        if autocast is not None:
            with autocast():
                loss, _ = batch_loss(model, batch, schedule)
        else:
            loss, _ = batch_loss(model, batch, schedule)
        total += float(loss) * batch.num_targets
        count += batch.num_targets
    return total / max(count, 1)


def greedy_samples(model, tokenizer, examples: Sequence[Example], schedule: Schedule,
                   max_new_tokens: int) -> list[dict]:
    """Greedy outputs under ``schedule`` through the runtime loop and the PyTorch backend."""
    if not examples:
        return []
    rows = Runtime(TorchBackend(model), tokenizer).generate([e.prompt for e in examples], schedule,
                                                            max_new_tokens=max_new_tokens, batch_size=len(examples))
    return [{"prompt": e.prompt, "output": r.text, "reference": e.target,
             "finish_reason": r.finish_reason} for e, r in zip(examples, rows)]
