"""Validation of an export against the PyTorch reference (run after every export and by
``skipdecode export --verify-only DIR``).

1. manifest vs files (SHA-256), ``onnx.checker`` on every graph;
2. each graph in ONNX Runtime (CPU) against its PyTorch module on random and real inputs: max
   abs error and relative error (max abs error / max |reference|), prefill and decode for layers
   (hidden states and the K/V written into the buffers), entry adapters on random inputs;
3. end to end: the ORT backend (runtime/onnxruntime_backend.py) chaining the graphs against
   the TorchBackend, teacher-forced on the reference's greedy tokens, batched rows of different
   lengths, under a skip schedule: logits of the prefill and every decode step (the schedule enters
   layers from skipped ones, so the entry adapters run on the rows they apply to).
Fails with SkipDecodeError naming the worst graph. With ``save_outputs`` the inputs of step 2 and
ORT's outputs for them are saved in polygraphy's format (export/polygraphy_outputs.py).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from tqdm import tqdm

from skipdecode.errors import SkipDecodeError
from skipdecode.export.contract import EMBED, LM_HEAD, adapter_name, graph_name
from skipdecode.runtime.feeds import decode_feeds, prefill_feeds
from skipdecode.runtime.manifest import Manifest, load_manifest

TOLERANCE = {"float32": 1e-4, "float16": 2e-2}
"""Largest relative error (max |ORT - torch| / max |torch|) accepted per graph and end to end."""
REAL_TEXT = "The capital of France is Paris. It is known for the Eiffel Tower and fine food."


def _err(a: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    if not np.isfinite(a).all():
        return float("inf"), float("inf")
    abs_err = float(np.abs(a - ref).max()) if a.size else 0.0
    return abs_err, abs_err / max(float(np.abs(ref).max()) if ref.size else 0.0, 1e-6)


class _Worst:
    def __init__(self):
        self.abs, self.rel = 0.0, 0.0

    def add(self, a, ref):
        e = _err(a, ref)
        self.abs, self.rel = max(self.abs, e[0]), max(self.rel, e[1])

    def record(self) -> dict:
        return {"max_abs": self.abs, "max_rel": self.rel}


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def _np_dtype(manifest: Manifest) -> np.dtype:
    return np.dtype(manifest.dtype)


# ---- per-graph references -------------------------------------------------------------------
def _torch_layer_rows(model, l: int, x: torch.Tensor, lens, extra: torch.Tensor, T: int):
    """Per row: prefill of its n_b tokens then one decode token; -> (prefill out, decode out, K, V)."""
    from skipdecode.models.attention import build_attention_mask

    outs = []
    layer = model.decoder_layers[l]
    for b, n in enumerate(lens):
        cache = model.new_cache(1, T)
        pos = torch.arange(n)[None]
        with torch.no_grad():
            pre = layer(x[b:b + 1, :n], model.rope(pos), build_attention_mask(torch.ones(1, n, dtype=torch.bool), 0, n),
                        cache.writer(l, 0))
            dec = layer(extra[b:b + 1], model.rope(torch.tensor([[n]])),
                        build_attention_mask(torch.ones(1, n + 1, dtype=torch.bool), n, 1), cache.writer(l, n))
        outs.append((pre[0].numpy(), dec[0].numpy(), cache.k[l][0, :, :n + 1].numpy(), cache.v[l][0, :, :n + 1].numpy()))
    return outs


def _ort_layer(sess, kind: str, x: np.ndarray, lens, extra: np.ndarray, manifest, T: int, feeds=None):
    """The same prefill + decode through one layer graph with the runtime's conventions; each
    feed is appended (copied) to ``feeds`` when given (polygraphy reference outputs)."""
    B, S, _ = x.shape
    dt = _np_dtype(manifest)
    shape = (B, manifest.num_kv_heads, T, manifest.head_dim)
    k, v = np.zeros(shape, dt), np.zeros(shape, dt)
    lens = np.asarray(lens)
    results = []
    for step, (h, f) in enumerate([(x, prefill_feeds(lens, S)), (extra, decode_feeds(lens))]):
        if kind == "gqa":
            feed = {"hidden": h.astype(dt), "past_key": k, "past_value": v, "seqlens_k": f.seqlens_k,
                    "total_sequence_length": np.array(f.total_sequence_length, np.int32)}
            if feeds is not None:
                feeds.append({n: a.copy() for n, a in feed.items()})
            out, k, v = sess.run(None, feed)
        else:
            pos = np.ascontiguousarray(f.positions)
            feed = {"hidden": h.astype(dt), "past_key": k, "past_value": v,
                    "write_index": f.write_index, "positions": pos}
            if feeds is not None:
                feeds.append({n: a.copy() for n, a in feed.items()})
            out, nk, nv = sess.run(None, feed)
            S_ = pos.shape[1]
            for b in range(B):
                w = int(f.write_index[b])
                k[b, :, w:w + S_] = nk[b]
                v[b, :, w:w + S_] = nv[b]
        results.append(out)
    return results[0], results[1], k, v


def check_layer(sess, kind, model, l: int, x: torch.Tensor, lens, extra: torch.Tensor, manifest, T, worst, feeds=None):
    ref = _torch_layer_rows(model, l, x, lens, extra, T)
    pre, dec, k, v = _ort_layer(sess, kind, x.numpy(), lens, extra.numpy(), manifest, T, feeds)
    for b, n in enumerate(lens):
        r_pre, r_dec, r_k, r_v = ref[b]
        worst["hidden"].add(pre[b, :n], r_pre[:n])
        worst["hidden"].add(dec[b], r_dec)
        worst["kv"].add(k[b, :, :n + 1], r_k)
        worst["kv"].add(v[b, :, :n + 1], r_v)


def _real_ids(tokenizer, vocab: int) -> list[int]:
    ids = [i for i in tokenizer.encode(REAL_TEXT) if i < vocab] if tokenizer is not None else []
    return ids if len(ids) >= 4 else list(range(3, 3 + 12))


def compare_graphs(folder: Path, manifest: Manifest, model, tokenizer, so, log, record=None) -> dict:
    """Per-graph errors; ``record(name, feeds)``, when given, gets every graph's ORT feeds."""
    rng = np.random.default_rng(0)
    c = model.config
    T = manifest.max_seq
    T_test = min(T, 64) if manifest.layer_kind == "gqa" else T
    V, Hd = c.vocab_size, c.hidden_size
    load = lambda e: ort.InferenceSession(str(folder / e.file), so, providers=["CPUExecutionProvider"])  # noqa: E731
    g = manifest.graphs
    report = {}
    real = _real_ids(tokenizer, V)[:32]
    # embed
    emb, w = load(g.embed), _Worst()
    ids = rng.integers(0, V, (2, 7))
    pos = np.stack([np.arange(7), np.maximum(np.arange(7) - 2, 0)])
    feeds = [{"input_ids": i, "positions": p} for i, p in [(ids, pos), (np.array([real]), np.arange(len(real))[None])]]
    for f in feeds:
        (out,) = emb.run(None, f)
        with torch.no_grad():
            w.add(out, model.embed(_t(f["input_ids"]), _t(f["positions"])).float().numpy())
    report[EMBED] = w.record()
    if record is not None:
        record(EMBED, feeds)
    # layers: random hidden and the real prompt's hidden at each layer's input
    with torch.no_grad():
        real_h = model.embed(torch.tensor([real]), torch.arange(len(real))[None])  # (1, P, hidden)
    S = 7
    lens = [S, S - 3]
    for l, e in enumerate(tqdm(g.layers, desc="validate layers", file=sys.stderr, leave=False)):
        sess = load(e)
        worst = {"hidden": _Worst(), "kv": _Worst()}
        feeds = [] if record is not None else None
        x = torch.from_numpy(rng.standard_normal((2, S, Hd)).astype(np.float32))
        extra = torch.from_numpy(rng.standard_normal((2, 1, Hd)).astype(np.float32))
        check_layer(sess, manifest.layer_kind, model, l, x, lens, extra, manifest, T_test, worst, feeds)
        P = real_h.shape[1]
        check_layer(sess, manifest.layer_kind, model, l, real_h[:, :P - 1], [P - 1], real_h[:, P - 1:],
                    manifest, T_test, worst, feeds)
        if record is not None:
            record(graph_name(l), feeds)
        with torch.no_grad():  # the real prompt's input to the next layer
            from skipdecode.models.attention import build_attention_mask
            cache = model.new_cache(1, P)
            real_h = model.decoder_layers[l](real_h, model.rope(torch.arange(P)[None]),
                                             build_attention_mask(torch.ones(1, P, dtype=torch.bool), 0, P),
                                             cache.writer(l, 0))
        report[graph_name(l)] = {k: v.record() for k, v in worst.items()}
    for l, e in manifest.adapter_graphs().items():
        sess, w, feeds = load(e), _Worst(), []
        for shape in ((2, S, Hd), (3, 1, Hd)):  # a prefill's and a decode step's
            h = rng.standard_normal(shape).astype(np.float32)
            feeds.append({"hidden": h.astype(_np_dtype(manifest))})
            (out,) = sess.run(None, feeds[-1])
            with torch.no_grad():
                w.add(out, model.enter(l, _t(h)).numpy())
        report[adapter_name(l)] = w.record()
        if record is not None:
            record(adapter_name(l), feeds)
    # lm_head
    head, w = load(g.lm_head), _Worst()
    argmax_ok = True
    feeds = []
    for h, last in [(rng.standard_normal((2, 3, Hd)).astype(np.float32), np.array([2, 0])),
                    (real_h.numpy(), np.array([real_h.shape[1] - 1]))]:
        feeds.append({"hidden": h.astype(_np_dtype(manifest)), "last_index": last})
        logits, nxt, tv, ti = head.run(None, feeds[-1])
        with torch.no_grad():
            ref = model.head(_t(h)[torch.arange(len(last)), _t(last)]).float().numpy()
        w.add(logits, ref)
        argmax_ok &= bool((nxt == logits.argmax(-1)).all() and (ti[:, 0] == nxt).all())
    report[LM_HEAD] = {**w.record(), "argmax_matches_logits": argmax_ok}
    if record is not None:
        record(LM_HEAD, feeds)
    return report


# ---- end to end -----------------------------------------------------------------------------
def end_to_end(folder: Path, model, tokenizer, new_tokens: int = 8, trained=None) -> dict:
    """Chained graphs against PyTorch under a decaying schedule in the drop order of ``trained``
    (the export's own schedule, if any)."""
    from skipdecode.models.backend import TorchBackend
    from skipdecode.runtime.lockstep import lockstep
    from skipdecode.runtime.onnxruntime_backend import OnnxRuntimeBackend
    from skipdecode.schedule import Schedule

    L = model.num_layers
    family = (trained or Schedule.full(L)).family()
    schedule = Schedule(L, L, max(1, L // 3, family["warmup_layers"]), window=new_tokens, **family)
    real = _real_ids(tokenizer, model.config.vocab_size)
    prompts = [real[:12], real[:7]]
    ort_b = OnnxRuntimeBackend(folder, verify=False)
    ref_b = TorchBackend(model)
    w = _Worst()
    agree, layers_run = 0, []
    for layers, r, a in lockstep(ref_b, ort_b, prompts, schedule, new_tokens):
        w.add(a, r)
        agree += int((a.argmax(-1) == r.argmax(-1)).all())
        layers_run.append(len(layers))
    layers_run = layers_run[1:]  # the decode steps (the prefill runs every layer)
    return {**w.record(), "steps": new_tokens, "greedy_steps_agreeing": agree, "schedule": schedule.describe(),
            "layers_per_step": layers_run, "prompt_lengths": [len(p) for p in prompts]}


def _ort_op_counts(folder: Path, manifest: Manifest) -> dict:
    """Op counts of the graph files and after ONNX Runtime's optimiser (ORT_ENABLE_ALL), for
    embed, the first layer and lm_head (every layer has layer 0's structure)."""
    import tempfile
    out = {}
    picks = [(n, e) for n, e in manifest.named_graphs() if n in (EMBED, graph_name(0), LM_HEAD)]
    with tempfile.TemporaryDirectory() as tmp:
        for name, e in picks:
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.optimized_model_filepath = str(Path(tmp) / f"{name}.onnx")
            so.log_severity_level = 3
            ort.InferenceSession(str(folder / e.file), so, providers=["CPUExecutionProvider"])
            opt = onnx.load(so.optimized_model_filepath, load_external_data=False)
            ops: dict[str, int] = {}
            for n in opt.graph.node:
                ops[n.op_type] = ops.get(n.op_type, 0) + 1
            out[name] = {"file_ops": e.ops, "ort_optimized_ops": len(opt.graph.node), "ort_optimized_types": ops}
    return out


def verify_export(folder: str | Path, model=None, tokenizer=None, log=lambda s: print(s, file=sys.stderr),
                  save_outputs: str | Path | None = None, save_layers=None) -> dict:
    """Validate an export folder; ``model`` defaults to the checkpoint named in the manifest.

    ``save_outputs``: a folder to write every graph's validation inputs and ORT outputs to, in
    polygraphy's format (export/polygraphy_outputs.py); the caller makes it atomic. ``save_layers``:
    which layers to save there (default all)."""
    folder = Path(folder)
    manifest = load_manifest(folder, verify=True)
    t0 = time.perf_counter()
    if model is None:
        from skipdecode.models import load_model

        if not manifest.source:
            raise SkipDecodeError(f"{folder}: the manifest names no source model; pass --model")
        model = load_model(manifest.source).model
    spec = None if model.entry_adapters is None else model.entry_adapters.spec()
    if spec != manifest.entry_adapter:
        raise SkipDecodeError(f"{folder}: the export's entry adapters ({manifest.entry_adapter}) are not the "
                              f"reference model's ({spec})")
    if tokenizer is None:
        from skipdecode.tokenizer import Tokenizer
        tokenizer = Tokenizer.from_dir(folder) if (folder / "tokenizer.json").exists() else None
    for name, e in manifest.named_graphs():
        try:
            onnx.checker.check_model(str(folder / e.file))
        except onnx.checker.ValidationError as err:
            raise SkipDecodeError(f"{folder / e.file}: onnx.checker rejects the {name} graph "
                                  f"({str(err).splitlines()[0]})") from None
    so = ort.SessionOptions()
    so.log_severity_level = 3
    saver = None
    if save_outputs is not None:
        from skipdecode.export.polygraphy_outputs import ReferenceSaver
        saver = ReferenceSaver(folder, save_outputs, manifest, save_layers)
    graphs = compare_graphs(folder, manifest, model, tokenizer, so, log, saver)
    e2e = end_to_end(folder, model, tokenizer, trained=manifest.schedule)
    tol = TOLERANCE[manifest.dtype]
    rel = {name: max(v["max_rel"] for v in r.values()) if "hidden" in r else r["max_rel"] for name, r in graphs.items()}
    worst = max(rel, key=rel.get)
    report = {"tolerance_rel": tol, "graphs": graphs, "worst_graph": worst, "worst_graph_rel": rel[worst],
              "end_to_end": e2e, "optimization": _ort_op_counts(folder, manifest),
              "seconds": round(time.perf_counter() - t0, 2)}
    if saver is not None:
        index = saver.finish()
        report["reference_outputs"] = {"runner": index["runner"], "graphs": len(index["graphs"]),
                                       "bytes": sum(e["bytes"] for e in index["graphs"].values())}
    log(f"validation: worst graph {worst} rel {rel[worst]:.2e}; end to end logits max abs {e2e['max_abs']:.2e} "
        f"rel {e2e['max_rel']:.2e} ({e2e['greedy_steps_agreeing']}/{e2e['steps']} greedy steps agree)")
    if rel[worst] > tol or not np.isfinite(rel[worst]):
        raise SkipDecodeError(f"validation failed: {worst} differs from PyTorch by {rel[worst]:.2e} relative "
                              f"(tolerance {tol:.0e}); see the per-graph errors above")
    if not graphs["lm_head"]["argmax_matches_logits"]:
        raise SkipDecodeError("validation failed: lm_head's next_token/topk_ids disagree with its logits")
    if e2e["max_rel"] > tol or not np.isfinite(e2e["max_rel"]):
        raise SkipDecodeError(f"validation failed: chained graphs differ from PyTorch at the logits by "
                              f"{e2e['max_rel']:.2e} relative (tolerance {tol:.0e}); worst single graph: {worst}")
    return report
