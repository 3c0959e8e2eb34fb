"""Rough CPU numbers behind the export's design choices (the machine is shared: medians of a few
repeats, not a benchmark suite; `skipdecode bench` is the runtime's).

1. tokens/s at batch 1, full depth: the ORT backend chaining an export vs the TorchBackend;
2. one decode layer call: the helper-built GQA graph vs the dynamo-exported standard-op graph
   (both in ONNX Runtime), and the export time of each builder;
3. thread-pool spinning on/off for the chained sessions.

    python scripts/bench_export.py --export build/smollm2 --model smollm2-135m
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import numpy as np


def tokens_per_s(backend, prompt, new_tokens, repeats):
    from skipdecode.runtime import GenerationConfig, generate_ids
    from skipdecode.schedule import Schedule

    cfg = GenerationConfig(max_new_tokens=new_tokens, ignore_eos=True)
    sched = Schedule.full(backend.num_layers)
    generate_ids(backend, [prompt], sched, cfg, [], 0, batch_size=1)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        generate_ids(backend, [prompt], sched, cfg, [], 0, batch_size=1)
        times.append(time.perf_counter() - t)
    return new_tokens / statistics.median(times)


def layer_call_us(sess, feed, repeats=200):
    for _ in range(10):
        sess.run(None, feed)
    t = time.perf_counter()
    for _ in range(repeats):
        sess.run(None, feed)
    return (time.perf_counter() - t) / repeats * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--export", default="build/smollm2")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch's OpenMP pool collapses on a busy 2-core machine (2 threads: ~3 tokens/s, 1: ~26)")
    ap.add_argument("--spinning", action="store_true", help="also time allow_spinning=1 (bad on a busy machine)")
    args = ap.parse_args()
    import onnx
    import onnxruntime as ort
    import torch

    from skipdecode.export import ort_graphs, torch_graphs
    from skipdecode.models import load_model
    from skipdecode.models.backend import TorchBackend
    from skipdecode.runtime.onnxruntime_backend import OnnxRuntimeBackend, session_options

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, onnxruntime {ort.__version__}")
    loaded = load_model(args.model)
    prompt = loaded.tokenizer.encode("Write a short story about a robot who learns to paint.")
    torch.set_num_threads(args.torch_threads)
    # alternate the two backends so both see the same load on a shared machine
    ort_b, ref_b = OnnxRuntimeBackend(args.export), TorchBackend(loaded.model)
    rates = {"onnxruntime": [], "torch": []}
    for _ in range(args.rounds):
        rates["onnxruntime"].append(tokens_per_s(ort_b, prompt, args.new_tokens, args.repeats))
        rates["torch"].append(tokens_per_s(ref_b, prompt, args.new_tokens, args.repeats))
    for k, v in rates.items():
        print(f"{k}: {statistics.median(v):.1f} tokens/s at batch 1, full depth (rounds: {[round(x, 1) for x in v]})")
    print(f"ratio onnxruntime / torch: {statistics.median(rates['onnxruntime']) / statistics.median(rates['torch']):.2f}")
    if args.spinning:
        spin_b = OnnxRuntimeBackend(args.export, spinning=True)
        print(f"onnxruntime, spinning on: {tokens_per_s(spin_b, prompt, args.new_tokens, args.repeats):.1f} tokens/s")
        del spin_b

    # one decode layer call at a 64-token context: GQA (helper) vs standard ops (dynamo)
    m, c = loaded.model, loaded.model.config
    T = 2048
    t = time.perf_counter()
    gqa = ort_graphs.layer_graph(m, 0, T, np.float32, 18)
    t_helper = time.perf_counter() - t
    t = time.perf_counter()
    std = torch_graphs.export_standard_layer(m, 0, T, 18)
    t_dynamo = time.perf_counter() - t
    so = session_options()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, g in (("gqa", gqa), ("standard", std)):
            paths[name] = os.path.join(tmp, name + ".onnx")
            onnx.save(g, paths[name])
        s_gqa = ort.InferenceSession(paths["gqa"], so, providers=["CPUExecutionProvider"])
        s_std = ort.InferenceSession(paths["standard"], so, providers=["CPUExecutionProvider"])
    h = np.random.default_rng(0).standard_normal((1, 1, c.hidden_size)).astype(np.float32)
    kv = np.zeros((1, c.num_kv_heads, T, c.head_dim), np.float32)
    us_gqa = layer_call_us(s_gqa, {"hidden": h, "past_key": kv, "past_value": kv.copy(),
                                   "seqlens_k": np.array([64], np.int32), "total_sequence_length": np.array(65, np.int32)})
    kv_small = kv[:, :, :256].copy()
    us_std = layer_call_us(s_std, {"hidden": h, "past_key": kv, "past_value": kv.copy(),
                                   "write_index": np.array([64], np.int32), "positions": np.array([[64]])})
    print(f"decode layer call, batch 1, context 64, T_max {T}: GQA graph {us_gqa:.0f} us, standard-op graph {us_std:.0f} us")
    print(f"export of one layer: onnx.helper {t_helper:.2f} s, dynamo {t_dynamo:.2f} s")
    del kv_small


if __name__ == "__main__":
    main()
