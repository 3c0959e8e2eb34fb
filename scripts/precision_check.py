"""The held-out loss curves of scripts/precision_check.sh side by side (issue 16 item 1).

    python scripts/precision_check.py runs/precision [--json docs/results/precision.json]

Prints one row per evaluation step: each run's held-out loss, bf16 minus fp32 per seed, and fp32's
seed 1 minus seed 0 (the noise bf16's differences are read against); then each run's median step
time (wall seconds per step over its logged intervals) and the fp32 / bf16 ratio per seed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

from skipdecode.cpu import cpu_flags, cpu_model
from skipdecode.io import read_jsonl
from skipdecode.training.precision import NATIVE_BF16_FLAGS


def curve(run: Path) -> tuple[dict[int, float], float]:
    """({step: held-out loss}, median step seconds) of one run's log.jsonl."""
    rows = read_jsonl(run / "log.jsonl")
    losses = {r["step"]: r["dev_loss"] for r in rows if r["event"] == "eval"}
    times = [r["step_s"] for r in rows if r["event"] == "train"]
    return losses, statistics.median(times) if times else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path)
    p.add_argument("--json", type=Path, help="also write the curves and ratios here")
    args = p.parse_args()
    runs = {d.name: curve(d) for d in sorted(args.root.iterdir()) if (d / "log.jsonl").exists()}
    seeds = sorted({n.split("-s")[1] for n in runs})
    names = [f"{prec}-s{s}" for s in seeds for prec in ("fp32", "bf16") if f"{prec}-s{s}" in runs]
    steps = sorted(set.intersection(*(set(runs[n][0]) for n in names)))
    pairs = [s for s in seeds if f"fp32-s{s}" in runs and f"bf16-s{s}" in runs]
    noise = "fp32-s0" in runs and "fp32-s1" in runs
    head = ["step", *names, *(f"bf16-fp32 s{s}" for s in pairs), *(["fp32 s1-s0"] if noise else [])]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for step in steps:
        cells = [f"{runs[n][0][step]:.4f}" for n in names]
        cells += [f"{runs[f'bf16-s{s}'][0][step] - runs[f'fp32-s{s}'][0][step]:+.4f}" for s in pairs]
        if noise:
            cells.append(f"{runs['fp32-s1'][0][step] - runs['fp32-s0'][0][step]:+.4f}")
        print(f"| {step} | " + " | ".join(cells) + " |")
    print("\nmedian step s: " + ", ".join(f"{n} {runs[n][1]:.2f}" for n in names))
    ratios = {s: runs[f"fp32-s{s}"][1] / runs[f"bf16-s{s}"][1] for s in pairs}
    print("fp32 / bf16 step time: " + ", ".join(f"seed {s} {r:.2f}x" for s, r in ratios.items()))
    flags = [f for f in NATIVE_BF16_FLAGS if f in cpu_flags()]
    print(f"machine: {platform.machine()} {cpu_model()}, {os.cpu_count()} cores, native bf16 flags: {', '.join(flags) or 'none'}")
    if args.json:
        args.json.write_text(json.dumps({"runs": {n: {"dev_loss": runs[n][0], "median_step_s": runs[n][1]} for n in names},
                                         "fp32_over_bf16_step_time": ratios, "native_bf16_flags": flags}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
