"""Where each running request's KV lives: rows ordered by depth, so every layer's rows are one range.

A layer set is "the warm-up layers plus the top n - w" (more generally, the first n layers of one
fixed drop order), so the rows that run a middle layer are exactly those whose current n reaches
it: a threshold on n. Keep the rows ordered by n, ascending, and each layer's rows are a
contiguous range of KV rows (a suffix), which a backend binds without copying.

For one schedule, ascending n is admission order (older rows have decayed further). Rows of equal
n may sit in any order, so when rows leave or change n only the rows outside their group's new
block move: one per later group, not one per later row.
"""

from __future__ import annotations

from typing import Sequence

from skipdecode.runtime.backend import Range


def place(depths: Sequence[int], current: Sequence[int | None]) -> list[int]:
    """Target KV rows [0, n) for n requests ordered by ``depths`` (ascending; ties in any order),
    keeping as many requests as possible where they are (``current``, None for none yet).

    >>> place([5, 5, 9], [0, 1, 2])          # already ordered: nothing moves
    [0, 1, 2]
    >>> place([5, 9, 9], [0, 2, 3])          # row 1 left: one 9 fills the hole, not both shift
    [0, 2, 1]
    >>> place([9, 5], [None, 0])             # a newcomer with more layers goes after
    [1, 0]
    """
    n = len(depths)
    target: list[int] = [-1] * n
    start = 0
    for depth in sorted(set(depths)):
        members = [i for i in range(n) if depths[i] == depth]
        block = range(start, start + len(members))
        stay = [i for i in members if current[i] is not None and current[i] in block]
        for i in stay:
            target[i] = current[i]  # type: ignore[assignment]
        taken = {target[i] for i in stay}
        free = [s for s in block if s not in taken]
        movers = sorted((i for i in members if i not in stay),
                        key=lambda i: (current[i] is None, current[i] if current[i] is not None else 0, i))
        for i, s in zip(movers, free):
            target[i] = s
        start += len(members)
    return target


def layer_ranges(layer_sets: Sequence[Sequence[int]], num_layers: int) -> list[Range]:
    """Per layer, the KV rows [a, b) that run it, given each row's layer set in row order.

    >>> layer_ranges([(0, 3), (0, 2, 3), (0, 1, 2, 3)], 4)
    [(0, 3), (2, 3), (1, 3), (0, 3)]
    """
    members: list[list[int]] = [[] for _ in range(num_layers)]
    for r, layers in enumerate(layer_sets):
        for l in layers:
            members[l].append(r)
    out: list[Range] = []
    for l, rows in enumerate(members):
        if not rows:
            out.append((0, 0))
            continue
        a, b = rows[0], rows[-1] + 1
        if b - a != len(rows):
            raise RuntimeError(f"layer {l} runs rows {rows}, not one contiguous range: the rows' layer sets "
                               "are not nested (schedules with different warm-up layers in one batch?)")
        out.append((a, b))
    return out
