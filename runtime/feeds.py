"""Row lengths -> graph feeds: the one place that knows how a call's rows become the inputs of
the exported graphs (export/contract.py) and of the reference's attention masks.

KV rows are stored right-padded: row r's position p lives at index p of its buffers. A prefill
writes positions ``[0, length_r)`` of fresh rows; a decode step writes one position per row.
GroupQueryAttention tells the two apart by one rule: ``total_sequence_length == S`` marks a first
prompt (nothing cached), anything else is a continuation whose new tokens end at ``seqlens_k``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from skipdecode.errors import SkipDecodeError


def right_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompts -> ids (n, S) int64 right-padded with ``pad_id``, lengths (n,) int64.

    >>> ids, n = right_pad([[7, 8], [5, 6, 7]], 0)
    >>> ids.tolist(), n.tolist()
    ([[7, 8, 0], [5, 6, 7]], [2, 3])
    """
    lengths = np.array([len(p) for p in prompts], np.int64)
    if len(lengths) == 0 or (lengths == 0).any():
        raise SkipDecodeError("empty prompt: every prompt needs at least one token")
    ids = np.full((len(prompts), int(lengths.max())), pad_id, np.int64)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = p
    return ids, lengths


@dataclass(frozen=True)
class Feeds:
    """What one graph call over n rows feeds besides the hidden state and the KV buffers."""

    positions: np.ndarray  # (n, S) int64
    last: np.ndarray  # (n,) int64: the column whose logits come back (lm_head's last_index)
    seqlens_k: np.ndarray  # (n,) int32: each row's length after the call, minus 1 (GQA)
    total_sequence_length: int  # GQA: S for a first prompt, else max(seqlens_k) + 1
    write_index: np.ndarray  # (n,) int32: where each row's new K/V go (standard graphs)


def prefill_feeds(lengths: np.ndarray, S: int) -> Feeds:
    """Fresh rows holding ``lengths`` prompt tokens, right-padded to S columns.

    >>> f = prefill_feeds(np.array([2, 3]), 3)
    >>> f.seqlens_k.tolist(), f.total_sequence_length, f.last.tolist(), f.write_index.tolist()
    ([1, 2], 3, [1, 2], [0, 0])
    """
    lengths = np.asarray(lengths, np.int64)
    n = len(lengths)
    return Feeds(np.broadcast_to(np.arange(S, dtype=np.int64), (n, S)), lengths - 1,
                 (lengths - 1).astype(np.int32), S, np.zeros(n, np.int32))


def decode_feeds(positions: np.ndarray) -> Feeds:
    """One new token per row at ``positions`` (n,), each row holding exactly ``positions`` keys.

    >>> f = decode_feeds(np.array([4, 9]))
    >>> f.seqlens_k.tolist(), f.total_sequence_length, f.write_index.tolist()
    ([4, 9], 10, [4, 9])
    """
    positions = np.asarray(positions, np.int64)
    return Feeds(positions[:, None], np.zeros(len(positions), np.int64), positions.astype(np.int32),
                 int(positions.max()) + 1, positions.astype(np.int32))


def check_capacity(need: int, capacity: int) -> None:
    if need > capacity:
        raise SkipDecodeError(f"KV buffer overflow: {need} positions needed, {capacity} allocated")


class KVLengths:
    """Keys each KV row holds in each layer: the bookkeeping every backend keeps, and the check
    that refuses a recompute (a layer asked to write position p of a row must hold exactly p keys
    of it).

    >>> kv = KVLengths(num_layers=3, rows=2)
    >>> kv.prefill(0, np.array([4, 2]), layers=(0, 1, 2))
    >>> kv.check(2, 0, 2, np.array([4, 2])); kv.advance(2, 0, 2)
    >>> kv.check(1, 0, 1, np.array([5]))
    Traceback (most recent call last):
    ...
    RuntimeError: layer 1 row 0 holds 4 keys but is asked to write position 5: a skipped layer ran again (KV would be recomputed)
    """

    def __init__(self, num_layers: int, rows: int):
        self.held = np.zeros((num_layers, rows), np.int64)  # (L, R)

    def prefill(self, start: int, lengths: np.ndarray, layers) -> None:
        """Fresh rows [start, start + n) now hold their prompts in ``layers`` and nothing elsewhere."""
        rows = slice(start, start + len(lengths))
        self.held[:, rows] = 0
        self.held[list(layers), rows] = lengths

    def check(self, layer: int, a: int, b: int, positions: np.ndarray) -> None:
        """Rows [a, b) may write ``positions`` (b - a,) in ``layer`` only if they hold exactly that many."""
        held = self.held[layer, a:b]
        if not np.array_equal(held, positions):
            i = int(np.flatnonzero(held != positions)[0])
            raise RuntimeError(f"layer {layer} row {a + i} holds {held[i]} keys but is asked to write position "
                               f"{positions[i]}: a skipped layer ran again (KV would be recomputed)")

    def advance(self, layer: int, a: int, b: int) -> None:
        self.held[layer, a:b] += 1

    def move(self, src, dst, layers) -> None:
        """Rows ``dst`` take over rows ``src``'s keys in ``layers`` (and hold none in the others)."""
        held = self.held[:, list(src)].copy()
        self.held[:, list(dst)] = 0
        for l in layers:
            self.held[l, list(dst)] = held[l]
