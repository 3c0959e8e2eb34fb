"""`skipdecode eval --export` on a tiny per-layer export: ONNX Runtime against the PyTorch reference,
then both reports through `skipdecode compare`."""

import json

import pytest

from skipdecode.cli.main import main

pytest.importorskip("onnxruntime")
pytest.importorskip("skipdecode.export.exporter")

ROWS = '"mr","ref"\n"w3 w4 w5","w10 w11 w12"\n"w6 w7","w12 w13"\n"w3 w4 w5","w60 w65 w67"\n"w8 w9 w20 w21","w14"\n' \
       '"w30","w56 w16"\n'


@pytest.fixture
def export_dir(tiny_export):
    return tiny_export("llama-gqa")[0]


def outputs(folder):
    return [json.loads(line) for line in (folder / "outputs.jsonl").read_text().splitlines()]


def test_eval_export_on_onnxruntime_equals_the_pytorch_reference(export_checkpoints, export_dir, tmp_path, capsys):
    data = tmp_path / "t.csv"
    data.write_text(ROWS)
    common = ["--data", str(data), "--max-layers", "5", "--min-layers", "2", "--window", "8",
              "--max-new-tokens", "8", "--batch-size", "3"]
    assert main(["eval", "--model", str(export_checkpoints["llama-gqa"]), *common, "--out", str(tmp_path / "torch")]) == 0
    assert main(["eval", "--export", str(export_dir), *common, "--out", str(tmp_path / "ort")]) == 0
    torch_out, ort_out = outputs(tmp_path / "torch"), outputs(tmp_path / "ort")
    assert [o["token_ids"] for o in ort_out] == [o["token_ids"] for o in torch_out]
    assert all(o["token_ids"] for o in ort_out)
    reports = [json.loads((tmp_path / n / "report.json").read_text()) for n in ("torch", "ort")]
    assert reports[1]["backend"] == "onnxruntime" and reports[1]["export"] == str(export_dir)
    for key in ("bleu", "rouge_l", "mean_layers", "layer_speedup", "target_speedup", "tokens"):
        assert reports[0][key] == reports[1][key], key

    capsys.readouterr()
    png = tmp_path / "cmp.png"
    assert main(["compare", str(tmp_path / "torch"), str(tmp_path / "ort"), "--plot", str(png)]) == 0
    table = capsys.readouterr().out
    assert "| skipdecode | torch |" in table and "| skipdecode | onnxruntime |" in table
    assert png.stat().st_size > 10_000


def test_eval_export_without_tensorrt_is_a_one_line_error(export_dir, tmp_path, capsys):
    data = tmp_path / "t.csv"
    data.write_text(ROWS)
    code = main(["eval", "--export", str(export_dir), "--backend", "tensorrt", "--data", str(data),
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    if code == 0:  # a TensorRT machine
        return
    assert code == 2 and err.startswith("skipdecode eval: error:") and "tensorrt" in err.lower()
    assert err.count("\n") == 1  # one line, no traceback


def test_eval_export_runs_without_torch(export_dir, tmp_path):
    """An edge install (ONNX Runtime, numpy, tokenizers) evaluates an export: torch is never imported."""
    from tiny import run_without_torch

    data = tmp_path / "t.csv"
    data.write_text(ROWS)
    code = (f"from skipdecode.cli.main import main\n"
            f"rc = main(['eval', '--export', {str(export_dir)!r}, '--data', {str(data)!r}, "
            f"'--speedup', '2', '--max-new-tokens', '4', '--out', {str(tmp_path / 'o')!r}])")
    proc = run_without_torch(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "o" / "report.json").read_text())["target_speedup"] == pytest.approx(2.0, rel=0.05)
