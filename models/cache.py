"""Preallocated KV buffers, one per layer, each with its own length.

A layer's length grows only when that layer runs. Under a SkipDecode schedule the set of
layers run never grows, so a layer that runs at slot s has already seen every slot before s:
writing anywhere else means KV would have to be recomputed, which we refuse loudly.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, max_len: int,
                 head_dim: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        shape = (batch_size, num_kv_heads, max_len, head_dim)  # (B, H_kv, T_max, D)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.lengths = [0] * num_layers
        self.max_len = max_len

    def reset(self) -> None:
        self.lengths = [0] * len(self.lengths)

    def writer(self, layer: int, slot: int):
        """A kv_fn for layer ``layer`` writing S new entries at ``slot`` (see models/base.py)."""
        if self.lengths[layer] != slot:
            raise RuntimeError(
                f"layer {layer} holds KV for {self.lengths[layer]} slots but is asked to write at "
                f"slot {slot}: the schedule let a skipped layer run again (KV would be recomputed)"
            )

        def write(k: torch.Tensor, v: torch.Tensor):  # k, v: (B, H_kv, S, D)
            end = slot + k.shape[2]
            if end > self.max_len:
                raise RuntimeError(f"KV buffer overflow: {end} slots needed, {self.max_len} allocated")
            self.k[layer][:, :, slot:end] = k
            self.v[layer][:, :, slot:end] = v
            self.lengths[layer] = end
            return self.k[layer][:, :, :end], self.v[layer][:, :, :end]  # (B, H_kv, end, D)

        return write
