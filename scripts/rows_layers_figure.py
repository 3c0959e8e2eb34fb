"""The rows x layers figure of docs/SERVING.md: one decode step of the engine with requests of
different ages and speedups in one batch, which layer runs which KV row.

    python scripts/rows_layers_figure.py --out docs/serving/rows_layers.png

The engine is driven for real (runtime/engine.py) over a shape-only backend that records the
ranges it is given and returns flat logits; the schedules are SmolLM2's (30 layers, window 32).
"""

from __future__ import annotations

import argparse

import numpy as np


class ShapeOnly:
    """A backend that records calls and computes nothing (every request ignores EOS)."""

    name, num_layers, max_positions, capture = "shape-only", 30, 4096, None

    def allocate(self, rows, max_len):
        self.calls = []

    def prefill(self, start, ids, lengths, layers):
        return np.zeros((len(ids), 8), np.float32)

    def decode(self, ids, positions, ranges):
        self.calls.append(list(ranges))
        return np.zeros((len(ids), 8), np.float32)

    def move(self, src, dst, length, layers):
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/serving/rows_layers.png")
    args = p.parse_args()

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from skipdecode.runtime import Engine, EngineConfig, Request
    from skipdecode.schedule import Schedule

    L = 30
    s3, s2, full = Schedule.for_speedup(L, 3, 32), Schedule.for_speedup(L, 2, 32), Schedule.full(L)
    backend = ShapeOnly()
    engine = Engine(backend, (), 0, EngineConfig(max_rows=8, max_len=512), s3)
    # (arrival step, schedule): rows of different ages and speedups share the batch at step 40
    arrivals = [(0, s3), (8, s3), (20, s2), (26, full), (30, s3), (34, s2), (37, s3), (39, s3)]
    pending = list(arrivals)
    for step in range(41):
        while pending and pending[0][0] <= step:
            engine.add(Request((5,) * 16, 400, pending.pop(0)[1], ignore_eos=True))
        engine.step()
    plan = engine.last_plan.decode
    ranges = backend.calls[-1]
    grid = np.zeros((L, len(plan.requests)))
    for l, (a, b) in enumerate(ranges):
        grid[l, a:b] = 1
    labels = [f"row {i}\n{r.schedule.speedup:.0f}x, t={r.step - 1}\nn={len(s)}"
              for i, (r, s) in enumerate(zip(plan.requests, plan.layer_sets))]
    fig, ax = plt.subplots(figsize=(8, 6), constrained_layout=True)
    ax.imshow(grid, aspect="auto", origin="lower", cmap="Blues", vmin=0, vmax=1.3)
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("layer")
    ax.set_title("one decode step: each layer runs one contiguous range of KV rows (blue)\n"
                 "rows ordered by their current depth n; skipped layers pass the hidden state through")
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}: ranges {ranges}")


if __name__ == "__main__":
    main()
