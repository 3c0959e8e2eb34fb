"""--save-outputs: every graph's validation inputs and ONNX Runtime outputs in polygraphy's JSON
format. They load back with polygraphy, match a fresh ORT run, and pass (or, tampered, fail)
`polygraphy run --onnxrt --load-inputs --load-outputs`: the command a GPU machine runs with --trt."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("polygraphy")

from skipdecode.errors import SkipDecodeError  # noqa: E402
from skipdecode.export.contract import LAYER_INPUTS, LAYER_OUTPUTS  # noqa: E402

ITERATIONS = {"embed": 2, "lm_head": 2}  # layers: prefill + decode, random rows and the real prompt
LAYER_ITERATIONS = 4


@pytest.fixture(scope="module")
def saved(tiny_export, tmp_path_factory):
    """name -> (export folder, saved folder, validation report), saved once per module."""
    from skipdecode.export.validate import verify_export

    root = tmp_path_factory.mktemp("polygraphy")
    cache = {}

    def get(name):
        if name not in cache:
            folder, loaded, _ = tiny_export(name)
            report = verify_export(folder, loaded.model, log=lambda s: None, save_outputs=root / name)
            cache[name] = (folder, root / name, report)
        return cache[name]

    return get


def _polygraphy_run(folder, saved_dir, graph, *extra):
    cli = "import sys; from polygraphy.tools import main; sys.exit(main())"  # the `polygraphy` script
    cmd = [sys.executable, "-c", cli, "run", str(folder / f"{graph}.onnx"), "--onnxrt",
           "--load-inputs", str(saved_dir / graph / "inputs.json"),
           "--load-outputs", str(saved_dir / graph / "outputs.json"), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ["llama-gqa", "llama-trt"])
def test_saved_outputs_load_back_and_match_a_fresh_ort_run(saved, name):
    import onnxruntime as ort

    from skipdecode.export.polygraphy_outputs import RUNNER, load_reference
    from skipdecode.runtime.manifest import load_manifest

    folder, out, report = saved(name)
    manifest = load_manifest(folder)
    index = json.loads((out / "index.json").read_text())
    graphs = dict(manifest.named_graphs())
    assert sorted(index["graphs"]) == sorted(graphs)
    assert report["reference_outputs"]["graphs"] == manifest.num_layers + 2
    for graph, e in index["graphs"].items():
        assert e["sha256"] == graphs[graph].sha256
        feeds, results = load_reference(out, graph)
        assert len(feeds) == e["iterations"] == ITERATIONS.get(graph, LAYER_ITERATIONS)
        assert [r for r, _ in results.items()] == [RUNNER]
        (runner, iterations), = results.items()
        sess = ort.InferenceSession(str(folder / e["file"]), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        for feed, it in zip(feeds, iterations):
            assert list(it.keys()) == names
            fresh = sess.run(None, feed)
            for n, a in zip(names, fresh):
                np.testing.assert_allclose(it[n], a, rtol=1e-6, atol=1e-6, err_msg=f"{graph} {n}")
    layer0 = load_reference(out, "layer_000")[0][0]
    target = manifest.target
    assert list(layer0) == list(LAYER_INPUTS[target])
    assert list(load_reference(out, "layer_000")[1][0][1][0].keys()) == list(LAYER_OUTPUTS[target])


def test_compare_script_uses_trt_for_standard_graphs(saved):
    _, out_gqa, _ = saved("llama-gqa")
    _, out_trt, _ = saved("llama-trt")
    gqa = (out_gqa / "compare.sh").read_text().splitlines()
    trt = (out_trt / "compare.sh").read_text().splitlines()
    runs = lambda lines, g: [ln for ln in lines if f'"$EXPORT/{g}.onnx"' in ln]  # noqa: E731
    # TensorRT parses no com.microsoft ops: the GQA layers are compared with another ORT instead
    assert "--onnxrt" in runs(gqa, "layer_000")[0] and "--trt" not in runs(gqa, "layer_000")[0]
    assert " --trt " in runs(gqa, "embed")[0] and " --trt " in runs(trt, "layer_000")[0]
    line = runs(trt, "layer_000")[0]
    # the profile covers every saved iteration: batch 1..2, seq 1..7, static T_max 96
    assert "'hidden:[1,1,64]'" in line and "'past_key:[2,2,96,16]'" in line.split("--trt-max-shapes")[1]
    assert "--load-inputs \"$OUTPUTS/layer_000/inputs.json\" --load-outputs \"$OUTPUTS/layer_000/outputs.json\"" in line


def test_polygraphy_run_accepts_saved_and_rejects_tampered_outputs(saved, tmp_path):
    from polygraphy.comparator import RunResults

    folder, out, _ = saved("llama-gqa")  # com.microsoft.GroupQueryAttention through polygraphy's runner
    ok = _polygraphy_run(folder, out, "layer_001", "--atol", "0", "--rtol", "0")
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    assert "PASSED" in ok.stdout + ok.stderr
    folder_t, out_t, _ = saved("llama-trt")
    bad = tmp_path / "bad"
    (bad / "layer_002").mkdir(parents=True)
    (bad / "layer_002" / "inputs.json").write_bytes((out_t / "layer_002" / "inputs.json").read_bytes())
    results = RunResults.load(str(out_t / "layer_002" / "outputs.json"))
    it = results[0][1][1]  # the batched decode step
    it["hidden_out"] = it["hidden_out"] + 1e-2
    results.save(str(bad / "layer_002" / "outputs.json"))
    fail = _polygraphy_run(folder_t, bad, "layer_002", "--atol", "1e-3", "--rtol", "1e-3")
    assert fail.returncode != 0 and "FAILED" in fail.stdout + fail.stderr


def test_cli_verify_only_save_outputs(tiny_export, tmp_path, capsys):
    from skipdecode.cli.main import main

    folder, _, _ = tiny_export("opt-gqa")
    dest = tmp_path / "ref"
    assert main(["export", "--verify-only", str(folder), "--save-outputs", str(dest), "--save-layers", "0,5"]) == 0
    assert f"bash {dest}/compare.sh {folder}" in capsys.readouterr().out
    assert sorted(p.name for p in dest.iterdir()) == ["compare.sh", "embed", "index.json", "layer_000", "layer_005",
                                                      "lm_head"]
    assert main(["export", "--verify-only", str(folder), "--save-outputs", str(dest)]) == 2
    assert "already exists (pass --overwrite" in capsys.readouterr().err
    assert main(["export", "--verify-only", str(folder), "--save-outputs", str(tmp_path / "x"),
                 "--save-layers", "6"]) == 2
    assert "--save-layers 6: the export has layers 0..5" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_export_writes_outputs_atomically(export_checkpoints, tmp_path):
    from skipdecode.export.exporter import ExportConfig, export_model, outputs_dir

    ckpt = str(export_checkpoints["opt-gqa"])
    with pytest.raises(SkipDecodeError, match="drop --no-validate"):
        ExportConfig(save_outputs=str(tmp_path / "p"), validate=False)
    (tmp_path / "taken").mkdir()
    with pytest.raises(SkipDecodeError, match="taken: already exists"):  # refused before exporting
        export_model(ckpt, tmp_path / "f", ExportConfig(save_outputs=str(tmp_path / "taken")), log=lambda s: None)
    # inside the export folder: written with it, in the same rename
    res = export_model(ckpt, tmp_path / "e", ExportConfig(max_seq=32, save_outputs=str(tmp_path / "e" / "polygraphy"),
                                                          save_layers=(1,)), log=lambda s: None)
    saved = tmp_path / "e" / "polygraphy"
    assert sorted(p.name for p in saved.iterdir()) == ["compare.sh", "embed", "index.json", "layer_001", "lm_head"]
    assert res["onnxruntime"]["report"]["reference_outputs"]["folder"] == str(saved)
    # elsewhere: its own folder, written only if everything inside succeeded
    with pytest.raises(SkipDecodeError, match="injected"):
        with outputs_dir(tmp_path / "g", False, (tmp_path / "e2", tmp_path / ".e2.tmp")) as d:
            (d / "half.json").write_text("{}")
            raise SkipDecodeError("validation failed: injected")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e", "taken"]
