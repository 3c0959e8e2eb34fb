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
