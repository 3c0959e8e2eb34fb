"""Every method gives valid graphs that keep the contract (GQA and its in-place KV untouched), run
in the runtime close to fp32, and say in the manifest what was done and with which data."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from skipdecode.calibration.capture import CaptureConfig, ShardSet, calibration_prompts, capture
from skipdecode.calibration.check import agreement
from skipdecode.calibration.graphs import check_contract
from skipdecode.calibration.quantize import FP32_ADAPTER, QuantConfig, quantize_export
from skipdecode.errors import SkipDecodeError
from skipdecode.export.contract import graph_name
from skipdecode.runtime import GenerationConfig, generate_ids
from skipdecode.runtime.lockstep import lockstep
from skipdecode.runtime.manifest import load_manifest
from skipdecode.runtime.onnxruntime_backend import OnnxRuntimeBackend
from skipdecode.schedule import Schedule
from skipdecode.tokenizer import Tokenizer

QUANT_OPS = {"int8-dynamic": "MatMulInteger", "int8-static": "QuantizeLinear", "int4-weight": "MatMulNBits"}
LAYER_ERROR = {"int8-dynamic": 0.15, "int8-static": 0.15, "int4-weight": 0.8}
"""Max |quantized - fp32| of a layer's output over max |fp32 update| (random weights, hidden 64:
int4 rounds each weight by ~10% of its spread, int8 by ~0.5%)."""


AGREEMENT = {"int8-dynamic": 0.9, "int8-static": 0.9, "int4-weight": 0.6}
"""Teacher-forced top-1 agreement with fp32 on the tiny OPT (measured 1.0, 0.975, 0.75)."""


def _capture(folder, csv, tmp_path, schedule, samples=4):
    capture(folder, calibration_prompts(csv, samples), schedule, tmp_path / "calib",
            CaptureConfig(samples, 0, 4, 8), show_progress=False)
    return ShardSet(tmp_path / "calib")


def _layer_errors(fp32, quant, manifest, shards):
    errs = []
    for l, e in enumerate(manifest.graphs.layers):
        a = ort.InferenceSession(str(fp32 / e.file))
        b = ort.InferenceSession(str(quant / e.file))
        for feed in shards.feeds(graph_name(l)):
            ra, rb = a.run(["hidden_out"], feed)[0], b.run(["hidden_out"], feed)[0]
            errs.append(np.abs(rb - ra).max() / np.abs(ra - feed["hidden"]).max())
    return max(errs)


@pytest.mark.parametrize("name,method", [(n, m) for n in ("llama-gqa", "opt-gqa") for m in QUANT_OPS]
                         + [("llama-trt", "int8-static")])
def test_method_gives_valid_graphs_that_run_close_to_fp32(tiny_export, train_csv, tmp_path, name, method):
    folder, loaded, _ = tiny_export(name)
    L = loaded.model.num_layers
    schedule = Schedule(L, max_layers=L - 1, min_layers=2, window=6)
    shards = _capture(folder, train_csv, tmp_path, schedule)
    out = tmp_path / "q"
    logs = []
    m = quantize_export(folder, out, QuantConfig(method, per_channel=True), shards, log=logs.append)
    src = load_manifest(folder)
    assert load_manifest(out) == m  # hashes verified
    for graph in ("embed", "lm_head"):  # kept fp32 by default: the same file
        assert getattr(m.graphs, graph).sha256 == getattr(src.graphs, graph).sha256
        assert m.quantization["graphs"][graph].startswith("kept fp32")
    for e, s in zip(m.graphs.layers, src.graphs.layers):
        model = onnx.load(out / e.file)
        onnx.checker.check_model(model)
        assert QUANT_OPS[method] in e.op_types and e.bytes < s.bytes
        assert e.inputs == s.inputs and e.outputs == s.outputs
        check_contract(onnx.load(folder / s.file), model, "layer")
        if src.target == "tensorrt":  # explicit Q/DQ, standard ops only, int8 with zero point 0
            assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
            zps = [i for i in model.graph.initializer if i.name.endswith("_zero_point")]
            assert zps and all(i.data_type == onnx.TensorProto.INT8 and not onnx.numpy_helper.to_array(i).any()
                               for i in zps)
    q = m.quantization
    assert q["method"] == method and q["target"] == src.target
    assert all(method.split("-")[0] in q["graphs"][graph_name(i)] for i in range(L))
    if method == "int8-static":
        c = q["calibration"]
        assert c["samples"] == 4 and c["seed"] == 0 and Schedule.from_dict(c["schedule"]) == schedule
        assert c["export_manifest_sha256"] == shards.index["export"]["manifest_sha256"]
    assert _layer_errors(folder, out, src, shards) < LAYER_ERROR[method]

    # the runtime takes it unchanged, under a skip schedule
    tok = Tokenizer.from_dir(out)
    ids = [tok.encode(p) for p in calibration_prompts(train_csv, 10, seed=5)[:4]]
    config = GenerationConfig(max_new_tokens=10, ignore_eos=True)
    got = generate_ids(OnnxRuntimeBackend(out), ids, schedule, config, tok.eos_ids, tok.pad_id)
    assert all(r.tokens == 10 for r in got)
    if name == "opt-gqa":  # well-conditioned random weights: the argmax mostly survives
        check = agreement(folder, out, ids, schedule, new_tokens=10)
        assert check["top1_agreement"] >= AGREEMENT[method], check


HEAD_KL = {"int8-dynamic": 0.1, "int4-weight": 1.5}
"""Teacher-forced mean KL from fp32 with the head and embedding quantized too, on the tiny Llama
(measured 0.02 and 0.75: int4 rounds the head's weights by ~10% of their spread)."""


def test_head_and_embedding_quantized_on_request(tiny_export, tmp_path):
    folder, _, _ = tiny_export("llama-gqa")
    for method, head_op, embed_op in [("int8-dynamic", "MatMulInteger", "DequantizeLinear"),
                                      ("int4-weight", "MatMulNBits", "GatherBlockQuantized")]:
        out = tmp_path / method
        m = quantize_export(folder, out, QuantConfig(method, head="quantized", embed="quantized"))
        g = m.graphs
        assert head_op in g.lm_head.op_types and embed_op in g.embed.op_types
        assert not m.quantization["graphs"]["lm_head"].startswith("kept")
        rows = generate_ids(OnnxRuntimeBackend(out), [[5, 6, 7], [9]], Schedule.full(6),
                            GenerationConfig(max_new_tokens=4, ignore_eos=True), [2], 0)
        assert [r.tokens for r in rows] == [4, 4]  # the runtime takes it
        check = agreement(folder, out, [[5, 6, 7], [9, 10, 11, 12]], Schedule.full(6), new_tokens=10)
        assert check["mean_kl"] < HEAD_KL[method], check


@pytest.mark.parametrize("reduce_range, top", [("on", 64), ("off", 127)])
def test_reduce_range_makes_the_int8_weights_7_bit(tiny_export, tmp_path, capsys, monkeypatch, reduce_range, top):
    """--reduce-range on keeps every int8 MatMul weight within 7 bits (|w| <= 64: ONNX Runtime's
    U8S8 kernels on x86 without VNNI cannot saturate), off uses the full 8 bits; the manifest says
    which. auto resolves on this machine (skipdecode.cpu.int8_saturates)."""
    from skipdecode.cpu import int8_saturates

    folder, _, _ = tiny_export("llama-gqa")
    m = quantize_export(folder, tmp_path / reduce_range, QuantConfig("int8-dynamic", reduce_range=reduce_range))
    assert m.quantization["reduced_weights"] is (reduce_range == "on")
    weights = [onnx.numpy_helper.to_array(i) for e in m.graphs.layers for i in onnx.load(tmp_path / reduce_range / e.file).graph.initializer
               if i.data_type == onnx.TensorProto.INT8 and i.dims and len(i.dims) == 2]
    assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) == top
    assert QuantConfig("int8-dynamic").reduced_weights is int8_saturates()
    with pytest.raises(SkipDecodeError, match="--reduce-range must be one of auto, on, off"):
        QuantConfig("int8-dynamic", reduce_range="7bit")
    # the runtime warns where full 8-bit weights meet a saturating CPU, and only there
    import skipdecode.cpu

    for saturates in (True, False):
        monkeypatch.setattr(skipdecode.cpu, "int8_saturates", lambda: saturates)
        capsys.readouterr()
        OnnxRuntimeBackend(tmp_path / reduce_range)
        warned = "--reduce-range on" in capsys.readouterr().err
        assert warned is (saturates and reduce_range == "off")


def test_check_is_recorded_in_the_manifest(tiny_export, tmp_path):
    folder, _, _ = tiny_export("opt-gqa")
    m = quantize_export(folder, tmp_path / "q", QuantConfig("int8-dynamic"), check_prompts=[[5, 6, 7], [9, 10]],
                        check_tokens=5)
    c = m.quantization["check"]
    assert c["prompts"] == 2 and c["steps"] == 10 and c["top1_agreement"] >= AGREEMENT["int8-dynamic"]
    assert 0 < c["mean_kl"] < 0.1
    assert json.loads((tmp_path / "q" / "manifest.json").read_text())["quantization"]["check"] == c


def test_schedule_mismatch_is_warned_and_recorded(tiny_export, train_csv, tmp_path):
    folder, _, _ = tiny_export("opt-gqa")
    skip = Schedule(6, 5, 2, window=6)
    # an export fine-tuned under `skip`: its manifest says so
    tuned = tmp_path / "tuned"
    shutil.copytree(folder, tuned)
    manifest = json.loads((tuned / "manifest.json").read_text())
    manifest["schedule"] = skip.to_dict()
    (tuned / "manifest.json").write_text(json.dumps(manifest))
    for export, schedule, warned in [(folder, skip, True), (folder, Schedule.full(6), False),
                                     (tuned, Schedule.full(6), True), (tuned, skip, False)]:
        work = tmp_path / f"w{len(list(tmp_path.iterdir()))}"
        shards = _capture(export, train_csv, work, schedule)
        logs = []
        m = quantize_export(export, work / "q", QuantConfig("int8-static"), shards, log=logs.append)
        warning = m.quantization["schedule_warning"]
        assert bool(warning) == warned and any("warning: calibration data drawn under" in s for s in logs) == warned
        if warned:
            assert schedule.describe() in warning


def test_contract_check_catches_a_node_on_the_kv_buffer(tiny_export):
    folder, _, _ = tiny_export("llama-gqa")
    original = onnx.load(folder / "layer_000.onnx")
    broken = onnx.ModelProto()
    broken.CopyFrom(original)
    gqa = next(n for n in broken.graph.node if n.op_type == "GroupQueryAttention")
    gqa.input[3] = "past_key_copy"
    broken.graph.node.insert(0, onnx.helper.make_node("Identity", ["past_key"], ["past_key_copy"]))
    with pytest.raises(RuntimeError, match="KV inputs/outputs"):
        check_contract(original, broken, "layer_000")
    assert check_contract(original, original, "layer_000")["GroupQueryAttention"] == 1


def test_bad_inputs_are_refused_before_any_work(tiny_export, train_csv, tmp_path):
    folder, _, _ = tiny_export("llama-gqa")
    trt, _, _ = tiny_export("llama-trt")
    with pytest.raises(SkipDecodeError, match="needs calibration data"):
        quantize_export(folder, tmp_path / "a", QuantConfig("int8-static"))
    with pytest.raises(SkipDecodeError, match="is a onnxruntime export"):
        quantize_export(folder, tmp_path / "a", QuantConfig("int8-dynamic", target="tensorrt"))
    with pytest.raises(SkipDecodeError, match="takes int8-static"):
        quantize_export(trt, tmp_path / "a", QuantConfig("int4-weight"))
    with pytest.raises(SkipDecodeError, match="unknown method"):
        QuantConfig("int3")
    shards = _capture(trt, train_csv, tmp_path / "t", Schedule.full(6), samples=2)
    with pytest.raises(SkipDecodeError, match="captured from another export"):
        quantize_export(folder, tmp_path / "a", QuantConfig("int8-static"), shards)
    done = quantize_export(folder, tmp_path / "q", QuantConfig("int8-dynamic"))
    assert done.quantization["method"] == "int8-dynamic"
    with pytest.raises(SkipDecodeError, match="already exists"):
        quantize_export(folder, tmp_path / "q", QuantConfig("int8-dynamic"))
    with pytest.raises(SkipDecodeError, match="already quantized"):
        quantize_export(tmp_path / "q", tmp_path / "b", QuantConfig("int8-dynamic"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_static_scales_cover_every_recorded_call(tiny_export, train_csv, tmp_path):
    """Each activation scale is the range over all calls (more of them than ORT's chunking keeps)."""
    folder, _, _ = tiny_export("llama-gqa")
    capture(folder, calibration_prompts(train_csv, 8), Schedule(6, 5, 2, window=6), tmp_path / "calib",
            CaptureConfig(8, 0, 2, 12), show_progress=False)
    shards = ShardSet(tmp_path / "calib")
    assert shards.calls("layer_000") > 40
    m = quantize_export(folder, tmp_path / "q", QuantConfig("int8-static", smooth_alpha=0), shards)  # raw inputs
    _scale_matches_range(tmp_path / "q" / m.graphs.layers[0].file, folder / "layer_000.onnx",
                         shards.feeds("layer_000"))


def _scale_matches_range(graph, probe_src, feeds, names_expected=4):
    """Every uint8 activation scale of ``graph`` is the MinMax range of ``feeds`` (fp32 ``probe_src``)."""
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(graph).graph.initializer}
    probe = onnx.load(probe_src)
    names = list(dict.fromkeys(n.input[0] for n in probe.graph.node if n.op_type == "MatMul"))
    assert len(names) == names_expected
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    sess = ort.InferenceSession(probe.SerializeToString())
    values = [sess.run(names, f) for f in feeds]
    for i, name in enumerate(names):
        lo = min(0.0, min(float(v[i].min()) for v in values))
        hi = max(0.0, max(float(v[i].max()) for v in values))
        np.testing.assert_allclose(inits[name + "_scale"], (hi - lo) / 255, rtol=1e-5, err_msg=name)


def test_split_phases_calibrate_prefill_and_decode_graphs_on_their_own_calls(tiny_export, train_csv, tmp_path):
    folder, _, _ = tiny_export("llama-gqa")
    schedule = Schedule(6, 4, 2, window=6)  # decode runs layer 0 and the top 3..1: layers 1 and 2 never
    capture(folder, calibration_prompts(train_csv, 8), schedule, tmp_path / "calib", CaptureConfig(8, 0, 4, 10),
            show_progress=False)
    shards = ShardSet(tmp_path / "calib")
    out = tmp_path / "q"
    config = QuantConfig("int8-static", smooth_alpha=0, outlier_ratio=float("inf"), split_phases=True)
    m = quantize_export(folder, out, config, shards)
    layers = m.graphs.layers
    assert [l for l, e in enumerate(layers) if e.decode] == [0, 3, 4, 5]
    assert [l for l in range(6) if shards.calls(graph_name(l), "decode")] == [0, 3, 4, 5]
    assert "prefill calls" in layers[0].precision and "decode calls" in layers[0].decode.precision
    _scale_matches_range(out / layers[0].file, folder / "layer_000.onnx", shards.feeds("layer_000", phase="prefill"))
    _scale_matches_range(out / layers[0].decode.file, folder / "layer_000.onnx",
                         shards.feeds("layer_000", phase="decode"))
    on_disk = json.loads((out / "manifest.json").read_text())["graphs"]["layers"][3]["decode"]
    assert on_disk == m.to_dict()["graphs"]["layers"][3]["decode"] and on_disk["file"] == "layer_003.decode.onnx"

    # the runtime runs the decode graphs on decode steps only: the prefill's logits are the same as
    # with the prefill graphs everywhere, the decode steps' are not
    split, main_only = OnnxRuntimeBackend(out), OnnxRuntimeBackend(out)
    main_only.decode_sessions = main_only.layer_sessions
    tok = Tokenizer.from_dir(out)
    prompts = [tok.encode(p) for p in calibration_prompts(train_csv, 10, seed=3)[:3]]
    steps = list(lockstep(split, main_only, prompts, schedule, 6))
    np.testing.assert_array_equal(steps[0][1], steps[0][2])
    assert any(not np.array_equal(a, b) for _, a, b in steps[1:])

    tampered = tmp_path / "tampered"
    shutil.copytree(out, tampered)
    with open(tampered / layers[4].decode.file, "ab") as f:
        f.write(b"\0")
    with pytest.raises(SkipDecodeError, match=r"layer_004 \(decode\) graph does not match its SHA-256"):
        load_manifest(tampered)


@pytest.mark.parametrize("name, fallback", [("llama-gqa", "int8 dynamic"), ("llama-trt", "kept fp32")])
def test_layers_that_never_run_under_a_prompt_depth_are_not_calibrated(tiny_export, train_csv, tmp_path, name,
                                                                       fallback):
    folder, _, _ = tiny_export(name)
    schedule = Schedule(6, 4, 2, window=6, prompt_layers=4)  # prompt and steps: layers 0, 3, 4, 5 only
    shards = _capture(folder, train_csv, tmp_path, schedule)
    assert [shards.calls(graph_name(l)) > 0 for l in range(6)] == [True, False, False, True, True, True]
    m = quantize_export(folder, tmp_path / "q", QuantConfig("int8-static", smooth_alpha=0), shards)
    precision = [e.precision for e in m.graphs.layers]
    assert all(f"{fallback}: no calls recorded" in precision[l] for l in (1, 2))
    assert all("int8 static" in precision[l] for l in (0, 3, 4, 5))
    config = GenerationConfig(max_new_tokens=6, ignore_eos=True)  # and the export runs at full depth too
    assert len(generate_ids(OnnxRuntimeBackend(tmp_path / "q"), [[5, 6, 7]], Schedule.full(6), config, [2], 0)[0]
               .token_ids) == 6


def test_split_phases_is_refused_where_it_cannot_apply(tiny_export):
    with pytest.raises(SkipDecodeError, match="applies to int8-static"):
        QuantConfig("int8-dynamic", split_phases=True)
    trt, _, _ = tiny_export("llama-trt")
    with pytest.raises(SkipDecodeError, match="decode graphs are for the onnxruntime target"):
        quantize_export(trt, trt.parent / "never", QuantConfig("int8-static", split_phases=True))


def test_entry_adapters_are_carried_unchanged_in_fp32(adapter_export, train_csv, tmp_path):
    """Calibrated on the export's own schedule (whose decode steps enter layers), static int8
    with decode graphs: the adapter graphs are copied as they are, and the quantized export runs."""
    folder, _ = adapter_export("opt-gqa", 3)
    src = load_manifest(folder)
    shards = _capture(folder, train_csv, tmp_path, src.schedule)
    m = quantize_export(folder, tmp_path / "q", QuantConfig("int8-static", split_phases=True), shards,
                        check_prompts=[[5, 6, 7], [9, 10]], check_tokens=5, log=lambda s: None)
    assert load_manifest(tmp_path / "q") == m and m.entry_adapter == src.entry_adapter
    assert [e.sha256 for e in m.graphs.adapters] == [e.sha256 for e in src.graphs.adapters]
    assert {g: p for g, p in m.quantization["graphs"].items() if g.startswith("adapter_")} == {
        f"adapter_00{l}": FP32_ADAPTER for l in (2, 3, 4, 5)}
    assert any(e.decode is not None for e in m.graphs.layers)
    assert m.quantization["check"]["steps"] == 10  # the agreement check ran both exports, adapters included
