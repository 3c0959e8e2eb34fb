"""The one small interface every backend implements (PyTorch reference, ONNX Runtime, TensorRT).

The engine (runtime/engine.py) owns the bookkeeping: which request sits in which KV row, each
row's position, which layers each row runs. A backend owns the weights and ``rows`` KV rows per
layer, ``(rows, H_kv, max_len, D)``, row r's position p at index p (runtime/feeds.py), and runs
what it is told. Arrays cross this interface as numpy.

Every call names its rows as a contiguous range ``[start, stop)`` of KV rows: a contiguous range
of a ``(rows, H_kv, T, D)`` buffer is a zero-copy view (a numpy view wrapped in an OrtValue, a
pointer offset on a GPU). The engine keeps rows ordered so that every layer's rows are one range.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np

Range = tuple[int, int]
"""KV rows [start, stop); empty when start == stop."""


def entering_rows(rows: Range, below: Range) -> list[Range]:
    """The rows of ``rows`` (those running a layer) outside ``below`` (those that ran the layer
    under it) as contiguous ranges: the rows that enter the layer from a skipped one, where an
    entry adapter applies. With rows ordered by depth there is at most one; none is assumed.

    >>> entering_rows((0, 6), (0, 4)), entering_rows((2, 6), (0, 0)), entering_rows((0, 6), (2, 4))
    ([(4, 6)], [(2, 6)], [(0, 2), (4, 6)])
    >>> entering_rows((0, 3), (0, 5))
    []
    """
    (a, b), (a1, b1) = rows, below
    if a1 >= b1:
        return [(a, b)] if a < b else []
    return [(lo, hi) for lo, hi in ((a, min(b, a1)), (max(a, b1), b)) if lo < hi]


class Backend(Protocol):
    name: str
    num_layers: int
    max_positions: int
    """The largest position count the model (or the export's buffers) supports."""
    calls: list[tuple]
    """("prefill", (start, stop), layers) / ("decode", ranges) of every call, for tests."""
    capture: Callable[[object, dict[str, np.ndarray]], None] | None
    """Optional hook called before each graph runs with the arrays bound as its inputs (the live
    buffers: copy what you keep); graph: "embed", a layer index or "lm_head". Exported-graph
    backends call it; the PyTorch reference has no graphs and ignores it."""

    def allocate(self, rows: int, max_len: int) -> None:
        """KV buffers of ``rows`` rows x ``max_len`` positions per layer; drops what was cached."""

    def prefill(self, start: int, ids: np.ndarray, lengths: np.ndarray, layers: Sequence[int]) -> np.ndarray:
        """Write the prompts ``ids`` (n, S) int64, right-padded, ``lengths`` (n,) real tokens,
        into fresh KV rows [start, start + n) of ``layers``. Returns logits (n, V) float32 of
        each row's last real token."""

    def decode(self, ids: np.ndarray, positions: np.ndarray, ranges: Sequence[Range]) -> np.ndarray:
        """One new token for each of KV rows [0, B): ``ids``, ``positions`` (B,) int64. Layer l
        runs rows ``ranges[l]`` (empty: skipped); the other rows' hidden states pass it
        unchanged. Row r must hold exactly ``positions[r]`` keys in every layer it runs.
        Returns logits (B, V) float32."""

    def move(self, src: Sequence[int], dst: Sequence[int], length: int, layers: Sequence[int]) -> None:
        """Copy KV rows ``src`` to rows ``dst`` (positions [0, length) of ``layers``); every
        source is read before any destination is written, so rows may trade places."""
