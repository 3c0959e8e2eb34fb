"""Does offline graph optimisation pay for our exports? (issue 5 section 4; numbers in export/README.md)

For embed, layer_000 and lm_head of each export folder given: file size and op counts of the
graph as exported, after onnxslim, and after ONNX Runtime's offline optimiser
(``SessionOptions.optimized_model_filepath``, BASIC and ALL levels); whether the result still
passes ``onnx.checker`` and stays standard-op (the tensorrt target's contract). Then the latency
of one decode layer call (batch 1, context 64, the backend's session options) and the session
creation time for each layer variant, alternating variants round by round so a shared machine's
load hits all of them alike. Medians; the machine is named in the first line.

    python scripts/bench_graph_opt.py build/smollm2 build/smollm2-trt   (pip install onnxslim first)
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def op_counts(model) -> collections.Counter:
    return collections.Counter((n.domain or "") + ("::" if n.domain else "") + n.op_type for n in model.graph.node)


def describe(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path))
    try:
        onnx.checker.check_model(str(path))
        checker = "ok"
    except onnx.checker.ValidationError as e:
        checker = "fails: " + str(e).splitlines()[0][:80]
    ops = op_counts(m)
    return {"bytes": path.stat().st_size, "ops": sum(ops.values()), "types": ops, "checker": checker,
            "standard_only": all(n.domain in ("", "ai.onnx") for n in m.graph.node)}


def ort_offline(src: Path, dst: Path, level) -> None:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.optimized_model_filepath = str(dst)
    so.log_severity_level = 3
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])


def variants(src: Path, tmp: Path) -> dict[str, Path]:
    """name -> file: as exported, onnxslim, ORT offline BASIC and ALL."""
    import onnx
    import onnxruntime as ort
    import onnxslim

    out = {"exported": src}
    t = time.perf_counter()
    slim = onnxslim.slim(onnx.load(str(src)))
    out["onnxslim"] = tmp / f"{src.stem}.slim.onnx"
    onnx.save(slim, str(out["onnxslim"]))
    print(f"    onnxslim took {time.perf_counter() - t:.2f} s")
    for name, level in (("ort-basic", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
                        ("ort-all", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)):
        out[name] = tmp / f"{src.stem}.{name}.onnx"
        ort_offline(src, out[name], level)
    return out


def decode_feed(manifest) -> dict:
    B, ctx = 1, 64
    T = manifest.max_seq
    h = np.random.default_rng(0).standard_normal((B, 1, manifest.hidden_size)).astype(np.float32)
    kv = np.zeros((B, manifest.num_kv_heads, T, manifest.head_dim), np.float32)
    if manifest.layer_kind == "gqa":
        return {"hidden": h, "past_key": kv, "past_value": kv.copy(), "seqlens_k": np.array([ctx], np.int32),
                "total_sequence_length": np.array(ctx + 1, np.int32)}
    return {"hidden": h, "past_key": kv, "past_value": kv.copy(), "write_index": np.array([ctx], np.int32),
            "positions": np.array([[ctx]])}


def time_layer(files: dict[str, Path], feed: dict, rounds: int, calls: int) -> dict:
    import onnxruntime as ort

    from skipdecode.runtime.onnxruntime_backend import session_options

    res = {k: {"us": [], "load_ms": []} for k in files}
    for _ in range(rounds):
        for name, f in files.items():
            so = session_options()
            if name.startswith("ort-"):  # already optimised offline: skip it at load, as one would deploy it
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            t = time.perf_counter()
            sess = ort.InferenceSession(str(f), so, providers=["CPUExecutionProvider"])
            res[name]["load_ms"].append((time.perf_counter() - t) * 1e3)
            for _ in range(10):
                sess.run(None, feed)
            times = []
            for _ in range(calls):
                t = time.perf_counter()
                sess.run(None, feed)
                times.append(time.perf_counter() - t)
            res[name]["us"].append(statistics.median(times) * 1e6)
    return {k: {"us": statistics.median(v["us"]), "us_rounds": [round(x) for x in v["us"]],
                "load_ms": statistics.median(v["load_ms"])} for k, v in res.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("exports", nargs="+")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args()
    import onnxruntime as ort
    try:
        import onnxslim
    except ImportError:
        raise SystemExit("this measurement needs onnxslim (pip install onnxslim); the export itself does not use it")

    from skipdecode.runtime.manifest import load_manifest

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} (shared); onnxruntime {ort.__version__}, onnxslim {onnxslim.__version__}")
    for folder in map(Path, args.exports):
        m = load_manifest(folder, verify=False)
        print(f"\n{folder}: target {m.target}, {m.layer_kind} layers, T_max {m.max_seq}")
        with tempfile.TemporaryDirectory() as tmp:
            for graph in ("embed.onnx", "layer_000.onnx", "lm_head.onnx"):
                print(f"  {graph}")
                files = variants(folder / graph, Path(tmp))
                base = describe(files["exported"])
                for name, f in files.items():
                    d = describe(f)
                    gone = dict(base["types"] - d["types"])
                    new = dict(d["types"] - base["types"])
                    diff = f"  removed {gone} added {new}" if name != "exported" else ""
                    print(f"    {name:9s} {d['bytes'] / 1e6:8.3f} MB  {d['ops']:4d} ops  checker {d['checker']:6s} "
                          f"standard-only {d['standard_only']}{diff}")
                if graph.startswith("layer"):
                    r = time_layer(files, decode_feed(m), args.rounds, args.calls)
                    for name, v in r.items():
                        print(f"    decode call {name:9s} {v['us']:7.0f} us (rounds {v['us_rounds']}), "
                              f"session load {v['load_ms']:.0f} ms")


if __name__ == "__main__":
    main()
