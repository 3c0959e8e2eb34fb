"""Attention pieces shared by every family: masks and scaled dot-product attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def build_attention_mask(key_mask: torch.Tensor, slot: int, seq_len: int) -> torch.Tensor:
    """Boolean mask (B, 1, S, slot + S) for S queries written at slots [slot, slot + S).

    A query sees the valid (non-padding) keys at or before its own slot. It always sees
    itself, so a padding query never has an all-masked row (which would make NaNs that leak
    into the KV buffers through 0 * NaN).
    """
    total = key_mask.shape[1]  # key_mask: (B, slot + S) bool
    q_slots = torch.arange(slot, slot + seq_len, device=key_mask.device)[:, None]  # (S, 1)
    k_slots = torch.arange(total, device=key_mask.device)[None, :]  # (1, T)
    causal = k_slots <= q_slots  # (S, T)
    mask = key_mask[:, None, :] & causal[None]  # (B, S, T)
    mask = mask | (k_slots == q_slots)[None]
    return mask[:, None]  # (B, 1, S, T)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """q (B, H, S, D), k/v (B, H_kv, T, D), mask (B, 1, S, T) -> (B, S, H * D)."""
    B, H, S, D = q.shape
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=H != k.shape[1])
    return out.transpose(1, 2).reshape(B, S, H * D)
