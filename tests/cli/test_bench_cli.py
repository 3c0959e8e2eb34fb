"""`skipdecode bench` end to end on a tiny checkpoint, and its one-line errors."""

import json

import pytest

from skipdecode.cli.main import main


@pytest.fixture
def restore_threads():
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_bench_with_hf_baseline_writes_json_and_plot(tiny_checkpoints, tmp_path, capsys, restore_threads):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    assert main(["bench", "--model", str(tiny_checkpoints["llama"]), "--batch-sizes", "1,2", "--speedups", "2",
                 "--prompt-len", "3", "--new-tokens", "4", "--warmup", "0", "--repeats", "1", "--compare", "hf",
                 "--threads", "1", "--json", str(out), "--plot", str(png)]) == 0
    doc = json.loads(out.read_text())
    keys = [(r["backend"], r["batch_size"], r["speedup"]) for r in doc["records"]]
    assert keys == [("torch", 1, 1.0), ("torch", 1, 2.0), ("hf", 1, 1.0),
                    ("torch", 2, 1.0), ("torch", 2, 2.0), ("hf", 2, 1.0)]
    assert all(r["tokens"] == r["batch_size"] * 4 for r in doc["records"])
    assert doc["settings"]["new_tokens"] == 4 and doc["settings"]["window"] is None
    assert png.read_bytes()[:4] == b"\x89PNG"
    table = capsys.readouterr().out
    assert "tok/s" in table and "hf: transformers" in table and "1 threads" in table


def error_of(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("skipdecode bench: error: "), err
    return err[-1]


@pytest.mark.parametrize("argv, message", [
    (["--speedups", "9"], "speedup 9"),
    (["--new-tokens", "1"], "new_tokens"),
    (["--backend", "onnxruntime"], "needs --export"),
    (["--compare", "ort-genai"], "does not support OPT"),
])
def test_bench_errors(tiny_checkpoints, capsys, argv, message):
    err = error_of(["bench", "--model", str(tiny_checkpoints["opt"]), *argv], capsys)
    assert message in err


def test_unknown_backend_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--compare", "vllm"])
    assert e.value.code == 2 and "unknown vllm" in capsys.readouterr().err
