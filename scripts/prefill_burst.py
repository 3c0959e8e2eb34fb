"""One burst of prompts prefilled by the engine: one call padded to the longest prompt against calls
split by length (EngineConfig.prefill_padding), interleaved, in one run on one export.

    python scripts/prefill_burst.py out/smollm2-fp32 [--prompts 24] [--min 32] [--max 256] [--repeats 3]

The chat workload's burst: 24 prompts of 32-256 random tokens at once, full depth."""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from skipdecode.runtime.engine import Engine, EngineConfig
from skipdecode.runtime.onnxruntime_backend import OnnxRuntimeBackend
from skipdecode.runtime.request import Request
from skipdecode.schedule import Schedule


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export")
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--min", type=int, default=32)
    ap.add_argument("--max", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--paddings", default="inf,0.25", help="prefill_padding values, comma-separated")
    args = ap.parse_args()
    backend = OnnxRuntimeBackend(args.export)
    rng = np.random.default_rng(0)
    lengths = rng.integers(args.min, args.max + 1, args.prompts)
    prompts = [rng.integers(100, 40000, n).tolist() for n in lengths]
    paddings = [float(x) for x in args.paddings.split(",")]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; "
          f"{args.prompts} prompts of {args.min}-{args.max} tokens ({lengths.sum()} real tokens), full depth")
    times: dict[float, list[float]] = {p: [] for p in paddings}
    calls = {}
    for _ in range(args.repeats + 1):  # the first round warms the sessions up and is dropped
        for p in paddings:
            eng = Engine(backend, (), 0, EngineConfig(len(prompts), args.max + 1, prefill_padding=p),
                         Schedule.full(backend.num_layers))
            for ids in prompts:
                eng.add(Request(ids, 1, ignore_eos=True))
            t0 = time.perf_counter()
            eng.step()
            times[p].append(time.perf_counter() - t0)
            plan = eng.last_plan.prefill
            calls[p] = [(len(n), ids.shape[1]) for _, ids, n in plan.calls()]
    base = min(times[paddings[0]][1:])
    for p in paddings:
        best = min(times[p][1:])
        padded = sum(k * s for k, s in calls[p])
        print(f"prefill_padding {p:>5}: {len(calls[p])} call(s), {padded} padded tokens, best of {args.repeats} "
              f"{best:.2f} s ({base / best:.2f}x the first)")
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
