"""KV layout helpers shared by the exported-graph backends (ONNX Runtime, TensorRT).

The generation loop left-pads prompts and shares cache slots across rows. Exported graphs store
KV *right-padded* instead: row b's position p lives at index p of its buffers (what ONNX Runtime's
GroupQueryAttention wants). These helpers translate between the two.
"""

from __future__ import annotations

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
