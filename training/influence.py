"""Block influence (ShortGPT, Men et al. 2024): how much a decoder layer turns its input,
``1 - cos(h_in, h_out)`` averaged over tokens. A layer that barely changes the hidden state is the
first candidate to skip, so sorting the droppable layers by influence gives a drop order
(``Schedule(..., drop_order=influence_order(...))``) measured on the model instead of assumed.

Fine-tuning changes which layers matter (the top ones carry the most after skip-aware training,
docs/RESULTS.md), so measure on the model you will fine-tune and compare orders on dev data.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def influence_order(influence: Sequence[float], warmup_layers: int) -> tuple[int, ...]:
    """The droppable layers (``warmup_layers`` and up), least influential first (ties: lower first).

    >>> influence_order([0.9, 0.1, 0.3, 0.1, 0.5], warmup_layers=1)
    (1, 3, 2, 4)
    """
    return tuple(sorted(range(warmup_layers, len(influence)), key=lambda l: (influence[l], l)))


def block_influence(hidden_in: torch.Tensor, hidden_out: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean ``1 - cos(h_in, h_out)`` over the tokens where ``mask`` (B, T) is true; states (B, T, H)."""
    cos = F.cosine_similarity(hidden_in.float(), hidden_out.float(), dim=-1)  # (B, T)
    return float((1 - cos)[mask].mean())


@torch.no_grad()
def layer_influence(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_mask: torch.Tensor | None = None) -> list[float]:
    """Block influence of every decoder layer of ``model`` (a SkipLM) in one full-depth forward,
    over the tokens of ``token_mask`` (B, T) (default: every real token)."""
    mask = attention_mask.bool() if token_mask is None else token_mask.bool() & attention_mask.bool()
    out: list[float] = []

    def hook(layer, args, output):
        out.append(block_influence(args[0], output, mask))

    handles = [layer.register_forward_hook(hook) for layer in model.decoder_layers]
    try:
        model(input_ids, attention_mask, logits_start=input_ids.shape[1] - 1)  # the head on one column only
    finally:
        for h in handles:
            h.remove()
    return out
