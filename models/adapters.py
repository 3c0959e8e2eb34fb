"""Entry adapters: a small learned map on the hidden state of a token that re-enters the stack
after skipped layers, one per entry layer (FlexiDepth uses lightweight adapters of this kind).

A token that runs layer l >= 1 without having run layer l - 1 gets ``h <- A_l(h)`` just before
layer l: ``h + up(down(h))`` (rank r, ``up`` zero-initialised) or ``h + delta(h)`` (rank
``full``, ``delta`` a hidden x hidden matrix, zero-initialised). Both are the identity at
initialisation, and AdamW's weight decay on their matrices pulls them back towards it. The map
changes only the entering token's own hidden state, so the KV of every layer a token runs is
computed as before from that token's input: still no KV is ever recomputed.

Which layers need one is the schedule family's :attr:`Schedule.entry_layers`; which layers a call
enters is :func:`skipdecode.schedule.entries` of its layer set. A checkpoint records
``{"rank": r, "layers": [...]}`` under ``ENTRY_ADAPTER`` in skipdecode.json, so that loading
recreates them before its weights are read.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from skipdecode.schedule import uncovered_entry

FULL = "full"
"""The rank of an adapter that is a whole hidden x hidden matrix."""
ENTRY_ADAPTER = "entry_adapter"
"""skipdecode.json's key for the adapters' rank and layers (absent without adapters)."""


def parse_rank(value) -> int | str | None:
    """``--entry-adapter``'s value: None (0, no adapters), a positive rank, or ``full``.

    >>> parse_rank("0"), parse_rank("16"), parse_rank("full")
    (None, 16, 'full')
    """
    if value == FULL:
        return FULL
    try:
        rank = int(value)
    except (TypeError, ValueError):
        rank = -1
    if isinstance(value, bool) or rank < 0:
        raise ValueError(f"entry_adapter must be 0 (none), a positive rank or {FULL!r}, got {value!r}")
    return rank or None


class EntryAdapter(nn.Module):
    """``h + up(down(h))`` (low rank) or ``h + delta(h)`` (``full``); the identity at init."""

    def __init__(self, hidden_size: int, rank: int | str, generator: torch.Generator | None = None):
        super().__init__()
        if rank == FULL:
            self.delta = nn.Linear(hidden_size, hidden_size, bias=False)
            nn.init.zeros_(self.delta.weight)
        else:
            self.down = nn.Linear(hidden_size, rank, bias=False)
            self.up = nn.Linear(rank, hidden_size, bias=False)
            # LoRA's init: down as nn.Linear's default (here from `generator`), up zero
            bound = 1 / math.sqrt(hidden_size)
            nn.init.uniform_(self.down.weight, -bound, bound, generator=generator)
            nn.init.zeros_(self.up.weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (..., hidden)
        if hasattr(self, "delta"):
            return hidden + self.delta(hidden)
        return hidden + self.up(self.down(hidden))  # (..., hidden) via (..., rank)


class EntryAdapters(nn.ModuleDict):
    """One :class:`EntryAdapter` per entry layer, keyed by the layer index (state dict names
    ``entry_adapters.<layer>.down.weight``, ``.up.weight`` or ``.delta.weight``)."""

    def __init__(self, hidden_size: int, rank: int | str, layers, seed: int | None = None):
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        layers = tuple(sorted(int(l) for l in layers))
        super().__init__({str(l): EntryAdapter(hidden_size, rank, generator) for l in layers})
        self.rank = rank
        self.layers = layers

    def spec(self) -> dict:
        """What skipdecode.json records under ``ENTRY_ADAPTER``."""
        return {"rank": self.rank, "layers": list(self.layers)}

    def enter(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` (..., hidden) of tokens entering ``layer``, mapped by its adapter."""
        key = str(layer)
        if key not in self:
            raise uncovered_entry(layer, self.layers)
        return self[key](hidden)
