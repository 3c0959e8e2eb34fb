"""Which calls set each projection input's static range: prefill or decode, under the deployment
schedule against full depth (the figures behind docs/QUANTIZATION.md's "where the ranges come
from").

    python scripts/calibration_ranges.py build/e2e3x build/e2e3x-int8-static.calib \
        build/e2e3x-int8-static-fullcal.calib [--layers 0,16,29] [--json out/ranges-3x.json]

For every constant-weight MatMul input of every layer graph of the fp32 export: max |x| over the
prefill calls and over the decode calls of each calibration folder (valid tokens only, as
calibration sees them). The first folder is the schedule-aware capture, the second the full-depth
one; both should come from the same prompts (same --data, --samples, --seed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx

from skipdecode.calibration.capture import ShardSet
from skipdecode.calibration.outliers import intermediates, weight_matmuls
from skipdecode.io import atomic_write_text


def phase_max(src: Path, shards: ShardSet, layer: int, names: list[str], phase: str) -> tuple[np.ndarray, int]:
    """(max |x| per activation over ``phase``'s calls, calls)."""
    m, calls = np.zeros(len(names)), 0
    for values in intermediates(src, lambda: shards.feeds(layer, phase=phase), names):
        m = np.maximum(m, [float(np.abs(v).max()) for v in values])
        calls += 1
    return m, calls


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("export")
    p.add_argument("schedule_shards", help="calibration folder captured under the deployment schedule")
    p.add_argument("full_shards", help="calibration folder captured at full depth")
    p.add_argument("--layers", help="comma-separated layers (default: all)")
    p.add_argument("--json", help="write the per-activation ranges here")
    args = p.parse_args()
    export, sched, full = Path(args.export), ShardSet(args.schedule_shards), ShardSet(args.full_shards)
    layers = [int(x) for x in args.layers.split(",")] if args.layers else range(sched.index["export"]["num_layers"])
    print(f"schedule-aware: {sched.schedule.describe()}, {sched.samples} prompts; full depth: {full.samples} prompts",
          file=sys.stderr)
    rows = []
    print("| layer | input of | prefill | decode, schedule | decode, full depth | schedule / full range |")
    print("|---|---|---|---|---|---|")
    for layer in layers:
        src = export / f"layer_{layer:03d}.onnx"
        mm = weight_matmuls(onnx.load(src))
        names = list(dict.fromkeys(a for a, _ in mm.values()))
        readers = {a: [w.removesuffix(".weight_t").split(".")[-1] for n, (x, w) in mm.items() if x == a] for a in names}
        pre, _ = phase_max(src, full, layer, names, "prefill")  # the same prompts: the same prefill
        dec_s, calls_s = phase_max(src, sched, layer, names, "decode")
        dec_f, calls_f = phase_max(src, full, layer, names, "decode")
        for i, a in enumerate(names):
            r_s, r_f = max(pre[i], dec_s[i]), max(pre[i], dec_f[i])
            rows.append({"layer": layer, "activation": a, "readers": readers[a], "prefill": pre[i],
                         "decode_schedule": dec_s[i], "decode_full": dec_f[i], "decode_calls_schedule": calls_s,
                         "decode_calls_full": calls_f, "range_schedule": r_s, "range_full": r_f})
            print(f"| {layer} | {'/'.join(readers[a])} | {pre[i]:.2f} | {dec_s[i]:.2f} ({calls_s} calls) | "
                  f"{dec_f[i]:.2f} | {r_s / r_f:.2f} |")
    n = len(rows)
    set_by = lambda key: sum(r[key] > r["prefill"] for r in rows)  # noqa: E731
    wider = [r for r in rows if r["range_schedule"] > 1.05 * r["range_full"]]
    narrower = [r for r in rows if r["range_schedule"] < r["range_full"] / 1.05]
    print(f"\n{n} projection inputs. Range set by a decode step rather than the prefill: {set_by('decode_schedule')} "
          f"under the schedule, {set_by('decode_full')} at full depth.")
    print(f"Schedule-aware range > 5% wider than full-depth (full-depth scales would clip skipped steps): "
          f"{len(wider)}, up to {max((r['range_schedule'] / r['range_full'] for r in wider), default=1):.2f}x; "
          f"> 5% narrower: {len(narrower)}, down to "
          f"{min((r['range_schedule'] / r['range_full'] for r in narrower), default=1):.2f}x.")
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
