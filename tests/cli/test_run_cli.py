"""`skipdecode run` over an ONNX export: same output as `generate`, and no torch needed."""

import json

from tiny import run_without_torch
from skipdecode.cli.main import main

ARGS = ["--prompt", "w5 w9 w14 w3", "--prompt", "w31", "--max-new-tokens", "8", "--speedup", "2", "--window", "4"]


def rows(capsys):
    return [json.loads(l) for l in capsys.readouterr().out.splitlines()]


def test_run_equals_generate(tiny_export, export_checkpoints, capsys):
    folder, _, _ = tiny_export("llama-gqa")
    assert main(["generate", "--model", str(export_checkpoints["llama-gqa"]), *ARGS]) == 0
    reference = rows(capsys)
    assert main(["run", "--export", str(folder), *ARGS]) == 0
    assert rows(capsys) == reference


def test_run_works_with_torch_and_transformers_unimportable(tiny_export, tmp_path):
    folder, _, _ = tiny_export("opt-gqa")
    out = tmp_path / "out.jsonl"
    proc = run_without_torch("from skipdecode.cli.main import main\n"
                             f"rc = main(['run', '--export', {str(folder)!r}, '--output', {str(out)!r}, *{ARGS!r}])")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [json.loads(l)["tokens"] for l in out.read_text().splitlines()] == [8, 8]


def test_run_errors_are_one_line(tiny_export, tmp_path, capsys):
    folder, _, _ = tiny_export("llama-gqa")
    assert main(["run", "--export", str(tmp_path), "--prompt", "w5"]) == 2
    assert "not an export" in capsys.readouterr().err
    assert main(["run", "--export", str(folder), "--prompt", "w5", "--max-new-tokens", "200"]) == 2
    err = capsys.readouterr().err.strip()
    assert "96" in err and len(err.splitlines()) == 1  # the export's T_max, checked before any work


def test_input_lines_carry_their_own_speedup_and_length(tiny_export, tmp_path, capsys):
    """Mixed speedups share one continuous batch; each row equals that speedup run on its own."""
    folder, _, _ = tiny_export("llama-gqa")
    lines = [{"prompt": "w5 w9 w14 w3", "speedup": 2}, {"prompt": "w31", "max_new_tokens": 3},
             {"prompt": "w7 w8", "speedup": 3, "max_new_tokens": 6}, {"prompt": "w40 w41 w42"}]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(l) + "\n" for l in lines))
    base = ["--max-new-tokens", "8", "--window", "4"]
    assert main(["run", "--export", str(folder), "--input", str(src), "--output", str(out), "--max-batch", "2",
                 *base]) == 0
    got = [json.loads(l) for l in out.read_text().splitlines()]
    for line, row in zip(lines, got):
        solo = ["--prompt", line["prompt"], "--max-new-tokens", str(line.get("max_new_tokens", 8)), "--window", "4"]
        if "speedup" in line:
            solo += ["--speedup", str(line["speedup"])]
        assert main(["run", "--export", str(folder), *solo]) == 0
        alone = rows(capsys)[0]
        assert (row["output"], row["tokens"], row["mean_layers"]) == (alone["output"], alone["tokens"],
                                                                      alone["mean_layers"])
    assert [r["mean_layers"] < 6 for r in got] == [True, False, True, False]
    src.write_text(json.dumps({"prompt": "w5", "speedup": "fast"}) + "\n")
    assert main(["run", "--export", str(folder), "--input", str(src)]) == 2
    err = capsys.readouterr().err.strip()
    assert "line 1: speedup must be a number" in err and len(err.splitlines()) == 1
