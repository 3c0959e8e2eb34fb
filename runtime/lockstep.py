"""Two backends in lockstep, teacher-forced on the first one's greedy tokens: how an export is
validated against the PyTorch reference and a quantized export against its fp32 source."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from skipdecode.runtime.backend import Backend
from skipdecode.runtime.generate import left_pad, positions_from_mask
from skipdecode.schedule import Schedule


def lockstep(ref: Backend, other: Backend, prompts: Sequence[Sequence[int]], schedule: Schedule,
             new_tokens: int, pad_id: int = 0) -> Iterator[tuple[tuple[int, ...], np.ndarray, np.ndarray]]:
    """Yield (layers run, ref logits (B, V), other logits (B, V)) for the prefill and then for
    ``new_tokens - 1`` decode steps, both fed the reference's greedy token at every step."""
    ids, mask = left_pad(prompts, pad_id)
    B, P = ids.shape
    for b in (ref, other):
        b.allocate(B, P + new_tokens)
    key_mask = np.zeros((B, P + new_tokens), bool)
    key_mask[:, :P] = mask
    positions = positions_from_mask(mask)  # (B, P)
    layers = tuple(range(ref.num_layers))
    lr = ref.forward(ids, positions, key_mask[:, :P], 0, layers)
    yield layers, lr, other.forward(ids, positions, key_mask[:, :P], 0, layers)
    pos = positions[:, -1:] + 1  # (B, 1)
    for t in range(new_tokens - 1):
        tok = lr.argmax(-1)[:, None].astype(np.int64)  # (B, 1)
        slot = P + t
        key_mask[:, slot] = True
        layers = schedule.layers_for_step(t)
        lr = ref.forward(tok, pos, key_mask[:, :slot + 1], slot, layers)
        yield layers, lr, other.forward(tok, pos, key_mask[:, :slot + 1], slot, layers)
        pos = pos + 1
