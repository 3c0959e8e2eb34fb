"""The PyTorch reference as a runtime backend: it plugs into runtime/'s interface from the
model side, so the runtime never imports torch."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from skipdecode.models.base import SkipLM


class TorchBackend:
    name = "torch"

    def __init__(self, model: SkipLM):
        self.model = model
        self.num_layers = model.num_layers
        c = model.config
        self.max_positions = c.max_position_embeddings
        self.device = next(model.parameters()).device
        self.cache = None
        self.layer_calls: list[tuple[int, tuple[int, ...]]] = []
        """(slot, layers) of every forward, for tests that count layer calls."""

    def allocate(self, batch_size: int, max_len: int) -> None:
        self.cache = self.model.new_cache(batch_size, max_len)
        self.layer_calls.clear()

    def forward(self, input_ids: np.ndarray, positions: np.ndarray, key_mask: np.ndarray,
                slot: int, layers: Sequence[int]) -> np.ndarray:
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device)  # noqa: E731
        self.layer_calls.append((slot, tuple(layers)))
        logits = self.model.forward_step(t(input_ids), t(positions), t(key_mask), self.cache, slot, layers)
        return logits.float().cpu().numpy()  # (B, V)
