"""KV layout helpers shared by the exported-graph backends (ONNX Runtime, TensorRT).

The generation loop left-pads prompts and shares cache slots across rows. Exported graphs store
KV *right-padded* instead: row b's position p lives at index p of its buffers (what ONNX Runtime's
GroupQueryAttention wants). These helpers translate between the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from skipdecode.errors import SkipDecodeError


def realign_prompt(input_ids: np.ndarray, key_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded (B, S) prompt -> right-padded ids (B, S) int64 and lengths n (B,) int64.

    >>> ids, n = realign_prompt(np.array([[0, 0, 7, 8], [5, 6, 7, 8]]), np.array([[0, 0, 1, 1], [1, 1, 1, 1]], bool))
    >>> ids.tolist(), n.tolist()
    ([[7, 8, 0, 0], [5, 6, 7, 8]], [2, 4])
    """
    B, S = input_ids.shape
    valid = np.asarray(key_mask[:, :S], bool)
    n = valid.sum(1).astype(np.int64)
    if (n == 0).any():
        raise SkipDecodeError("empty prompt: every row needs at least one token")
    out = np.zeros((B, S), np.int64)
    for b in range(B):
        out[b, : n[b]] = input_ids[b, valid[b]]
    return out, n


def check_no_recompute(layer_len: Sequence[int], layers: Sequence[int], slot: int) -> None:
    """Every layer asked to run at ``slot`` must already hold exactly ``slot`` steps of KV."""
    for l in layers:
        if layer_len[l] != slot:
            raise RuntimeError(f"layer {l} holds KV for {layer_len[l]} slots but is asked to write at slot "
                               f"{slot}: the schedule let a skipped layer run again (KV would be recomputed)")


@dataclass(frozen=True)
class StepPlan:
    """What one forward of an exported-graph backend feeds its graphs (right-padded rows)."""

    prefill: bool
    ids: np.ndarray  # (B, S) int64, right-padded
    positions: np.ndarray  # (B, S) int64
    last: np.ndarray  # (B,) int64: the column whose logits come back
    write_index: np.ndarray  # (B,) int32: where each row's new K/V go
    new_lengths: np.ndarray  # (B,) int64: each row's length after this call


def plan_step(input_ids: np.ndarray, positions: np.ndarray, key_mask: np.ndarray, slot: int,
              lengths: np.ndarray, capacity: int, backend: str) -> StepPlan:
    """Translate the loop's left-padded call (slot 0: prefill, else one token) for a backend that
    stores row b's position p at index p of its KV buffers; refuses overflow before any work."""
    B, S = input_ids.shape
    if slot == 0:
        ids, n = realign_prompt(input_ids, key_mask)
        plan = StepPlan(True, ids, np.broadcast_to(np.arange(S), (B, S)), n - 1, np.zeros(B, np.int32), n)
    elif S == 1:
        if not np.array_equal(positions[:, 0], lengths):
            raise RuntimeError(f"positions {positions[:, 0].tolist()} differ from the rows' lengths "
                               f"{lengths.tolist()}: KV is stored at index = position")
        plan = StepPlan(False, input_ids, positions, np.zeros(B, np.int64), lengths.astype(np.int32), lengths + 1)
    else:
        raise SkipDecodeError(f"{backend} backend: S > 1 new tokens are supported only as the prefill (slot 0)")
    if plan.new_lengths.max() > capacity:
        raise SkipDecodeError(f"KV buffer overflow: {int(plan.new_lengths.max())} positions, {capacity} allocated")
    return plan


def begin_step(backend, input_ids: np.ndarray, positions: np.ndarray, key_mask: np.ndarray, slot: int,
               layers: Sequence[int], capacity: int) -> tuple[tuple[int, ...], StepPlan]:
    """The checks every exported-graph backend makes before a forward, then its plan.

    ``backend`` has ``batch``, ``layer_len``, ``layer_calls``, ``lengths`` and ``name``.
    """
    if input_ids.shape[0] != backend.batch:
        raise SkipDecodeError(f"batch of {input_ids.shape[0]} rows, buffers allocated for {backend.batch} "
                              "(call allocate first)")
    layers = tuple(layers)
    check_no_recompute(backend.layer_len, layers, slot)
    backend.layer_calls.append((slot, layers))
    return layers, plan_step(input_ids, positions, key_mask, slot, backend.lengths, capacity, backend.name)
