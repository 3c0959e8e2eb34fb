"""What every family shares: the skip-aware training forward and the cached decode step.

A family (models/llama.py, models/opt.py) provides four pieces with HF parameter names:
``embed(input_ids, positions)``, ``rope(positions)`` (None where positions are learned),
``decoder_layers`` and ``head(hidden)``. Each decoder layer is called as
``layer(hidden, rope, mask, kv_fn)`` where ``kv_fn(k, v)`` returns the keys and values to attend
over: the new ones themselves in the training forward, the cache prefix when decoding.

Optional entry adapters (models/adapters.py) map the hidden state of each token that runs a layer
without the one below, just before that layer (:meth:`SkipLM.enter`), in every path alike.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from skipdecode.models.adapters import EntryAdapters
from skipdecode.models.attention import build_attention_mask
from skipdecode.models.cache import KVCache
from skipdecode.schedule import Schedule, entries

IGNORE_INDEX = -100


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Per-row positions from a left-padding mask (B, S): 0 at each row's first real token."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _identity_kv(k, v):
    return k, v


class SkipLM(nn.Module):
    config: object
    decoder_layers: nn.ModuleList
    entry_adapters: EntryAdapters | None

    def __init__(self):
        super().__init__()
        self.register_module("entry_adapters", None)

    # ---- family hooks -------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def rope(self, positions: torch.Tensor):
        return None

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def num_layers(self) -> int:
        return len(self.decoder_layers)

    # ---- entry adapters -----------------------------------------------------------------------
    def add_entry_adapters(self, rank: int | str, layers, seed: int | None = None) -> EntryAdapters:
        """Identity-initialised adapters for ``layers`` (a family's ``Schedule.entry_layers``),
        on the model's device and dtype; ``seed`` seeds a low-rank ``down`` init."""
        p = next(self.parameters())
        self.entry_adapters = EntryAdapters(self.config.hidden_size, rank, layers, seed).to(p.device, p.dtype)
        return self.entry_adapters

    def enter(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """The hidden states (..., hidden) of tokens that run ``layer`` but skipped ``layer - 1``,
        as the layer takes them: its entry adapter applied, or unchanged without adapters."""
        if self.entry_adapters is None:
            return hidden
        return self.entry_adapters.enter(layer, hidden)

    # ---- training / scoring forward -----------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        schedule: Schedule | None = None,
        prompt_len: int | None = None,
        logits_start: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T - logits_start, V) and the mean loss over labels != -100.

        Prompts are left-padded so that column ``prompt_len`` holds every row's first generated
        token; prompt columns run ``schedule.prompt_layer_set()`` and the token in column
        ``prompt_len + t`` runs the layers of ``schedule`` step t. The columns that run layer l are
        a prefix: the prompt's set contains step 0's and the sets only shrink, so a layer runs
        either no column (outside the prompt's set) or the prompt and the first k generated
        columns. Each layer computes only that prefix and the rest of the sequence passes through
        unchanged (no masking, no wasted FLOPs). The columns that run layer l but not l - 1 are
        then ``[end_{l-1}, end_l)``: they enter l (:meth:`enter`), as in cached decoding.
        """
        B, T = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        attention_mask = attention_mask.bool()
        positions = positions_from_mask(attention_mask)  # (B, T)
        hidden = self.embed(input_ids, positions)  # (B, T, hidden)
        rope = self.rope(positions)
        mask = build_attention_mask(attention_mask, 0, T)  # (B, 1, T, T)
        if schedule is None or schedule.is_full:
            ends = [T] * self.num_layers
        else:
            if prompt_len is None:
                raise ValueError("a skip schedule needs prompt_len (the first generated column)")
            ends = [schedule.columns_running_layer(l, prompt_len, T - prompt_len) for l in range(self.num_layers)]
        for l, (layer, end) in enumerate(zip(self.decoder_layers, ends)):
            start = ends[l - 1] if l > 0 else end  # columns [start, end) enter layer l
            if start < end:
                entering = self.enter(l, hidden[:, start:end])  # (B, end - start, hidden)
                hidden = torch.cat([hidden[:, :start], entering, hidden[:, end:]], dim=1)
            if end == T:
                hidden = layer(hidden, rope, mask, _identity_kv)
            elif end > 0:
                part_rope = None if rope is None else tuple(r[:, :end] for r in rope)
                top = layer(hidden[:, :end], part_rope, mask[:, :, :end, :end], _identity_kv)
                hidden = torch.cat([top, hidden[:, end:]], dim=1)
        logits = self.head(hidden[:, logits_start:])  # (B, T', V)
        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1].float()
            shift_labels = labels[:, logits_start + 1:]
            loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                                   shift_labels.reshape(-1), ignore_index=IGNORE_INDEX)
        return logits, loss

    # ---- cached decoding ----------------------------------------------------------------------
    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        p = next(self.parameters())
        c = self.config
        return KVCache(self.num_layers, batch_size, c.num_kv_heads, max_len, c.head_dim, p.dtype, p.device)

    @torch.inference_mode()
    def forward_step(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        key_mask: torch.Tensor,
        cache: KVCache,
        slot: int,
        layers: Sequence[int],
        last_only: bool = True,
    ) -> torch.Tensor:
        """Run ``layers`` over S new tokens written at cache slots [slot, slot + S).

        input_ids/positions: (B, S); key_mask: (B, slot + S) bool, the valid keys so far.
        Prefill passes ``schedule.prompt_layer_set()``; decode step t ``schedule.layers_for_step(t)``.
        The tokens enter each layer of ``entries(layers)``. Returns logits (B, V) for the last
        column, or (B, S, V).
        """
        S = input_ids.shape[1]
        hidden = self.embed(input_ids, positions)  # (B, S, hidden)
        rope = self.rope(positions)
        mask = build_attention_mask(key_mask.bool(), slot, S)  # (B, 1, S, slot + S)
        entering = entries(layers)
        for l in layers:
            if l in entering:
                hidden = self.enter(l, hidden)
            hidden = self.decoder_layers[l](hidden, rope, mask, cache.writer(l, slot))
        if last_only:
            return self.head(hidden[:, -1])  # (B, V)
        return self.head(hidden)  # (B, S, V)
