"""`skipdecode export` on tiny random OPT and Llama: validation against PyTorch, the manifest
against the files, refused tampering, and bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from skipdecode.errors import SkipDecodeError
from skipdecode.export.contract import EMBED_INPUTS, HEAD_OUTPUTS, LAYER_INPUTS, LAYER_OUTPUTS, graph_name, layer_file
from skipdecode.runtime.manifest import load_manifest, sha256_file

ALL = ["llama-gqa", "opt-gqa", "llama-trt", "opt350-std"]


@pytest.mark.parametrize("name", ALL)
def test_export_matches_pytorch(tiny_export, name):
    folder, loaded, result = tiny_export(name)
    report = result["report"]
    # fp32: every graph and the chained logits within 1e-4 of PyTorch
    for graph, r in report["graphs"].items():
        errs = [r["hidden"], r["kv"]] if "hidden" in r else [r]
        assert all(e["max_rel"] < 1e-4 for e in errs), (graph, r)
    e2e = report["end_to_end"]
    assert e2e["max_abs"] < 1e-4
    assert e2e["greedy_steps_agreeing"] == e2e["steps"]
    assert len(set(e2e["layers_per_step"])) > 1  # a real skip schedule was exercised
    assert (folder / "validation.json").exists()


@pytest.mark.parametrize("name", ["llama-gqa", "llama-trt"])
def test_manifest_matches_files(tiny_export, name):
    folder, loaded, _ = tiny_export(name)
    m = json.loads((folder / "manifest.json").read_text())
    c = loaded.model.config
    assert m["num_layers"] == c.num_layers == len(m["graphs"]["layers"])
    assert m["max_seq"] == 96 and m["kv_layout"]["axes"] == "BNSH"
    assert m["kv_layout"]["shape"][1:] == ([c.num_kv_heads, "max_seq", c.head_dim] if m["layer_kind"] == "gqa"
                                           else [c.num_kv_heads, 96, c.head_dim])
    assert m["config"]["hidden_size"] == c.hidden_size and m["opset"] == 18
    assert {"torch", "onnx", "onnxruntime"} <= set(m["exporter"])
    assert "tokenizer.json" in m["tokenizer_files"] and (folder / "tokenizer.json").exists()
    files = [("embed", m["graphs"]["embed"]), ("lm_head", m["graphs"]["lm_head"])]
    files += [(graph_name(i), e) for i, e in enumerate(m["graphs"]["layers"])]
    for i, e in enumerate(m["graphs"]["layers"]):
        assert e["file"] == layer_file(i)
    for name, e in files:
        for f, digest in e["sha256"].items():
            assert sha256_file(folder / f) == digest
        g = onnx.load(str(folder / e["file"])).graph
        assert [i["name"] for i in e["inputs"]] == [i.name for i in g.input]
        assert [o["name"] for o in e["outputs"]] == [o.name for o in g.output]
        for spec, vi in zip(e["inputs"] + e["outputs"], list(g.input) + list(g.output)):
            dims = [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
            assert spec["shape"] == dims, (name, spec["name"])
    target = m["target"]
    assert [i["name"] for i in m["graphs"]["embed"]["inputs"]] == list(EMBED_INPUTS)
    assert [o["name"] for o in m["graphs"]["lm_head"]["outputs"]] == list(HEAD_OUTPUTS)
    layer0 = m["graphs"]["layers"][0]
    assert [i["name"] for i in layer0["inputs"]] == list(LAYER_INPUTS[target])
    assert [o["name"] for o in layer0["outputs"]] == list(LAYER_OUTPUTS[target])
    assert load_manifest(folder).to_dict() == m  # the typed manifest reads and writes the same JSON
    assert list(m)[0] == "format_version" and "quantization" not in m


def test_tensorrt_target_uses_standard_ops_only(tiny_export):
    folder, _, _ = tiny_export("llama-trt")
    for f in sorted(folder.glob("*.onnx")):
        m = onnx.load(str(f))
        assert {n.domain for n in m.graph.node} <= {"", "ai.onnx"}, f.name
        assert [o.domain for o in m.opset_import if o.domain not in ("", "ai.onnx")] == []


def test_tampered_or_missing_graph_is_refused(tiny_export, tmp_path):
    from skipdecode.export.validate import verify_export
    from skipdecode.runtime.onnxruntime_backend import OnnxRuntimeBackend

    folder, loaded, _ = tiny_export("llama-gqa")
    bad = tmp_path / "tampered"
    shutil.copytree(folder, bad)
    with open(bad / layer_file(2), "ab") as f:
        f.write(b"\0")
    with pytest.raises(SkipDecodeError, match=r"layer_002\.onnx: layer_002 graph does not match its SHA-256"):
        OnnxRuntimeBackend(bad)
    with pytest.raises(SkipDecodeError, match="SHA-256"):
        verify_export(bad, loaded.model)
    (bad / layer_file(2)).unlink()
    with pytest.raises(SkipDecodeError, match=r"layer_002\.onnx: layer_002 graph file is missing"):
        OnnxRuntimeBackend(bad)
    (bad / "manifest.json").unlink()
    with pytest.raises(SkipDecodeError, match="no manifest.json"):
        OnnxRuntimeBackend(bad)


def test_validation_names_the_worst_graph(tiny_export, tmp_path):
    """A graph whose weights drifted (hash re-stamped) fails validation with its name."""
    from skipdecode.export.validate import verify_export

    folder, loaded, _ = tiny_export("opt-gqa")
    bad = tmp_path / "drifted"
    shutil.copytree(folder, bad)
    g = onnx.load(str(bad / layer_file(3)))
    for init in g.graph.initializer:
        if init.name == "fc1.weight_t":
            arr = onnx.numpy_helper.to_array(init) * 1.01
            init.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), init.name))
    onnx.save(g, str(bad / layer_file(3)))
    m = json.loads((bad / "manifest.json").read_text())
    m["graphs"]["layers"][3]["sha256"] = {layer_file(3): sha256_file(bad / layer_file(3))}
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(SkipDecodeError, match="validation failed: layer_003"):
        verify_export(bad, loaded.model, log=lambda s: None)


def test_bad_input_and_atomic_output(export_checkpoints, tmp_path, monkeypatch):
    from skipdecode.export import exporter
    from skipdecode.export.exporter import ExportConfig, export_model

    ckpt = str(export_checkpoints["opt-gqa"])
    with pytest.raises(SkipDecodeError, match="above the model's 128 positions"):
        export_model(ckpt, tmp_path / "a", ExportConfig(max_seq=4096), log=lambda s: None)
    (tmp_path / "exists").mkdir()
    with pytest.raises(SkipDecodeError, match="already exists"):
        export_model(ckpt, tmp_path / "exists", ExportConfig(), log=lambda s: None)
    with pytest.raises(SkipDecodeError, match="unknown target"):
        ExportConfig(target="tflite")

    # a failure mid-way leaves neither the output folder nor a temporary one
    def boom(*a, **k):
        raise SkipDecodeError("validation failed: injected")

    monkeypatch.setattr("skipdecode.export.validate.verify_export", boom)
    with pytest.raises(SkipDecodeError, match="injected"):
        export_model(ckpt, tmp_path / "half", ExportConfig(max_seq=32), log=lambda s: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]
    assert exporter.DEFAULT_MAX_SEQ == 2048


def test_unsupported_architecture_cli(tmp_path, capsys):
    from skipdecode.cli.main import main

    bad = tmp_path / "gpt2"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    assert main(["export", "--model", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "unsupported architecture 'GPT2LMHeadModel'" in capsys.readouterr().err


def test_verify_only_cli(tiny_export, capsys):
    from skipdecode.cli.main import main

    folder, _, _ = tiny_export("opt-gqa")
    before = {p.name: sha256_file(p) for p in folder.iterdir()}
    assert main(["export", "--verify-only", str(folder)]) == 0  # model from the manifest's source
    out = capsys.readouterr().out
    assert "end to end" in out and "layer_005" in out
    assert {p.name: sha256_file(p) for p in folder.iterdir()} == before
    assert load_manifest(folder).source


@pytest.mark.smoke
def test_smollm2_export(tmp_path):
    from skipdecode.export.exporter import ExportConfig, export_model

    results = export_model("smollm2-135m", tmp_path / "smollm2", ExportConfig(max_seq=256), log=lambda s: None)
    r = results["onnxruntime"]
    assert r["manifest"].layer_kind == "gqa" and r["manifest"].num_layers == 30
    assert r["report"]["end_to_end"]["max_rel"] < 1e-4
