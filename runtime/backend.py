"""The one small interface every backend implements (PyTorch reference, ONNX Runtime, TensorRT).

The generation loop (runtime/generate.py) owns the bookkeeping: token ids, per-row positions,
the key-validity mask and the cache slot. A backend owns the weights and the KV buffers and runs
one forward over the layers it is told to run. Arrays cross this interface as numpy.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np


class Backend(Protocol):
    name: str
    num_layers: int
    max_positions: int
    """The largest position the model supports (prompt + new tokens must fit)."""

    def allocate(self, batch_size: int, max_len: int) -> None:
        """Prepare KV buffers (B, H_kv, max_len, D) for every layer; lengths reset to 0."""

    def forward(
        self,
        input_ids: np.ndarray,
        positions: np.ndarray,
        key_mask: np.ndarray,
        slot: int,
        layers: Sequence[int],
    ) -> np.ndarray:
        """Run ``layers`` over S tokens written at slots [slot, slot + S).

        input_ids, positions: (B, S) int64; key_mask: (B, slot + S) bool (valid keys so far).
        Returns float32 logits (B, V) of the last column.
        """
