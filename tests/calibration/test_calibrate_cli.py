"""`skipdecode calibrate` end to end on a tiny export: the output is accepted unchanged by `run`,
`bench --export` and `eval --export`; calibration data is reused; bad input is one line."""

from __future__ import annotations

import json

import pytest

from skipdecode.cli.main import main

RUN = ["--prompt", "w5 w9 w14 w3", "--prompt", "w31", "--max-new-tokens", "6", "--speedup", "2", "--window", "4"]


def test_calibrate_then_run_bench_and_eval(tiny_export, train_csv, tmp_path, capsys):
    folder, _, _ = tiny_export("llama-gqa")
    out = tmp_path / "int8"
    args = ["calibrate", str(folder), "--out", str(out), "--method", "int8-static", "--data", str(train_csv),
            "--samples", "4", "--max-new-tokens", "6", "--check-prompts", "2", "--speedup", "2", "--window", "4"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "capturing calibration data: 4 prompts under linear" in err and "top-1 agreement" in err
    assert "warning: calibration data drawn under" in err  # the tiny export deploys full depth
    m = json.loads((out / "manifest.json").read_text())
    q = m["quantization"]
    assert q["method"] == "int8-static" and q["calibration"]["samples"] == 4
    assert q["calibration"]["schedule_mode"] == "deployment" and q["calibration"]["schedule"]["max_layers"] < 6
    assert q["check"]["prompts"] == 2 and (tmp_path / "int8.calib" / "index.json").is_file()
    assert (out / "tokenizer.json").is_file() and m["schedule"] is None

    assert main(args + ["--overwrite", "--per-channel"]) == 0  # the same capture: reused
    assert "reusing the calibration data" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--calibration-schedule", "full"]) == 0  # another schedule: captured again
    err = capsys.readouterr().err
    assert "capturing calibration data: 4 prompts under full depth" in err and "warning" not in err
    assert main(args + ["--overwrite", "--split-phases"]) == 0  # run, bench and eval below take decode graphs
    layers = json.loads((out / "manifest.json").read_text())["graphs"]["layers"]
    assert layers[0]["decode"]["file"] == "layer_000.decode.onnx" and (out / "layer_000.decode.onnx").is_file()

    assert main(["run", "--export", str(out), *RUN]) == 0
    rows = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert [r["tokens"] for r in rows] == [6, 6]
    assert main(["bench", "--export", str(out), "--batch-sizes", "1", "--speedups", "2", "--new-tokens", "4",
                 "--prompt-len", "4", "--repeats", "1", "--warmup", "0", "--threads", "1"]) == 0
    assert "onnxruntime" in capsys.readouterr().out
    assert main(["eval", "--export", str(out), "--data", str(train_csv), "--limit", "3", "--max-new-tokens", "4",
                 "--out", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["num_inputs"] == 3


def test_dynamic_and_int4_need_no_data(tiny_export, tmp_path, capsys):
    folder, _, _ = tiny_export("opt-gqa")
    for method in ("int8-dynamic", "int4-weight"):
        out = tmp_path / method
        assert main(["calibrate", str(folder), "--out", str(out), "--method", method, "--check-prompts", "2",
                     "--head", "quantized"]) == 0
        q = json.loads((out / "manifest.json").read_text())["quantization"]
        assert q["calibration"] is None and q["check"]["prompts"] == 2 and not q["graphs"]["lm_head"].startswith("kept")
    assert "int4-weight: " in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (["--method", "int8-static"], "needs calibration data"),
    (["--method", "int8-static", "--data", "{tmp}/nope.csv"], "no such file"),
    (["--method", "int8-static", "--data", "{tmp}/testset.csv"], "test set"),
    (["--method", "int8-static", "--data", "{csv}", "--samples", "0"], "samples must be >= 1"),
    (["--method", "int8-dynamic", "--target", "tensorrt"], "is a onnxruntime export"),
    (["--method", "int4-weight", "--block-size", "24"], "block size"),
    (["--method", "int8-dynamic", "--smooth", "0.5"], "--smooth applies to int8-static"),
    (["--method", "int8-dynamic", "--speedup", "99"], "speedup"),
])
def test_bad_input_is_one_line(tiny_export, train_csv, tmp_path, capsys, extra, message):
    folder, _, _ = tiny_export("llama-gqa")
    capsys.readouterr()  # the export's progress bars, when this test builds it
    (tmp_path / "testset.csv").write_text(train_csv.read_text())
    extra = [e.format(tmp=tmp_path, csv=train_csv) for e in extra]
    assert main(["calibrate", str(folder), "--out", str(tmp_path / "q"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("skipdecode calibrate: error:")
    assert not (tmp_path / "q").exists()


def test_missing_export_is_one_line(tmp_path, capsys):
    assert main(["calibrate", str(tmp_path / "none"), "--out", str(tmp_path / "q"), "--method", "int8-dynamic"]) == 2
    assert "no such export folder" in capsys.readouterr().err
