"""Which calls set each projection input's static range: prefill or decode, under the deployment
schedule against full depth (the figures behind docs/QUANTIZATION.md's "where the ranges come
from").

    python scripts/calibration_ranges.py build/e2e3x build/e2e3x-int8-static.calib \
        build/e2e3x-int8-static-fullcal.calib [--layers 0,16,29] [--json out/ranges-3x.json]

For every constant-weight MatMul input of every layer graph of the fp32 export: max |x| over the
prefill calls and over the decode calls of each calibration folder (valid tokens only, as
calibration sees them). The first folder is the schedule-aware capture, the second the full-depth
one; both should come from the same prompts (same --data, --samples, --seed).

"clip" is how far the deployment's activations (prefill + skip decode) exceed the range a
full-depth calibration sets (1.00: covered): without SmoothQuant, max |x| over the schedule's calls
over max |x| over the full-depth calls; with SmoothQuant (alpha 0.5, where a site can be
smoothed), the same after dividing each channel by the factors the full-depth calls give
(``calibration/smooth.py``), against the range those factors leave the full-depth calls.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx

from skipdecode.calibration.capture import ShardSet
from skipdecode.calibration.outliers import weight_matmuls
from skipdecode.calibration.smooth import channel_max, scales, sites, weight_max
from skipdecode.export.contract import graph_name, layer_file
from skipdecode.io import atomic_write_text


def phase_channel_max(src: Path, shards: ShardSet, layer: int, names: list[str], phase: str
                      ) -> tuple[dict[str, np.ndarray], int]:
    """(activation -> max |x_j| per channel (C,) over ``phase``'s calls, decode steps that ran the
    layer); nothing if none did."""
    steps = shards.calls(graph_name(layer), "decode")
    if phase == "decode" and steps == 0:
        return {}, 0
    return channel_max(src, lambda: shards.feeds(graph_name(layer), phase=phase), names), steps


def smoothed_clip(model: onnx.ModelProto, deploy: dict, full: dict, alpha: float = 0.5) -> dict[str, float]:
    """Smoothable activation -> max_j(deploy_j / s_j) / max_j(full_j / s_j), s from ``full``."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = {}
    for site in sites(model):
        s = scales(full[site.activation], weight_max(site, inits), alpha)
        out[site.activation] = float((deploy[site.activation] / s).max() / (full[site.activation] / s).max())
    return out


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
    print("| layer | input of | prefill | decode, schedule | decode, full depth | clip | clip, SmoothQuant |")
    print("|---|---|---|---|---|---|---|")
    for layer in layers:
        src = export / layer_file(layer)
        mm = weight_matmuls(onnx.load(src))
        names = list(dict.fromkeys(a for a, _ in mm.values()))
        readers = {a: [w.removesuffix(".weight_t").split(".")[-1] for n, (x, w) in mm.items() if x == a] for a in names}
        pre, _ = phase_channel_max(src, full, layer, names, "prefill")  # the same prompts: the same prefill
        dec_s, calls_s = phase_channel_max(src, sched, layer, names, "decode")
        dec_f, calls_f = phase_channel_max(src, full, layer, names, "decode")
        zero = {a: np.zeros_like(pre[a]) for a in names}
        dec_s, dec_f = dec_s or zero, dec_f or zero
        deploy = {a: np.maximum(pre[a], dec_s[a]) for a in names}  # (C,) what the layer sees at run time
        calib = {a: np.maximum(pre[a], dec_f[a]) for a in names}  # (C,) what full-depth calibration records
        sq = smoothed_clip(onnx.load(src), deploy, calib)
        for a in names:
            p, d_s, d_f = float(pre[a].max()), float(dec_s[a].max()), float(dec_f[a].max())
            clip = float(deploy[a].max() / calib[a].max())
            rows.append({"layer": layer, "activation": a, "readers": readers[a], "prefill": p,
                         "decode_schedule": d_s, "decode_full": d_f, "decode_calls_schedule": calls_s,
                         "decode_calls_full": calls_f, "clip": clip, "clip_smoothed": sq.get(a)})
            print(f"| {layer} | {'/'.join(readers[a])} | {p:.2f} | {d_s:.2f} ({calls_s} calls) | {d_f:.2f} | "
                  f"{clip:.2f} | {'' if a not in sq else f'{sq[a]:.2f}'} |")
    n, smoothed = len(rows), [r for r in rows if r["clip_smoothed"] is not None]
    set_by = lambda key: sum(r[key] > r["prefill"] for r in rows)  # noqa: E731
    print(f"\n{n} projection inputs. Range set by a decode step rather than the prefill: {set_by('decode_schedule')} "
          f"under the schedule, {set_by('decode_full')} at full depth.")
    for label, key, rs in [("without SmoothQuant", "clip", rows), ("with SmoothQuant 0.5", "clip_smoothed", smoothed)]:
        c = np.array([r[key] for r in rs])
        print(f"Full-depth ranges clip the deployment's activations, {label}: {int((c > 1.05).sum())} of {len(c)} "
              f"inputs by more than 5%, median clip {np.median(c):.2f}, largest {c.max():.2f}x.")
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
