"""`skipdecode generate` end to end, and its one-line errors for bad input."""

import json
import subprocess
import sys

import pytest

from skipdecode.cli.main import main


def test_generate_jsonl_in_input_order(tiny_checkpoints, tmp_path, capsys):
    ckpt = tiny_checkpoints["llama"]
    inp = tmp_path / "in.jsonl"
    prompts = ["w5 w9 w14 w3", "w31", "w8 w8 w40"]
    inp.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--model", str(ckpt), "--input", str(inp), "--output", str(out),
                 "--max-new-tokens", "6", "--speedup", "2", "--window", "4", "--batch-size", "2"]) == 0
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == prompts
    for r in rows:
        assert {"prompt", "output", "tokens", "mean_layers"} <= set(r)
        assert 1 <= r["tokens"] <= 6 and r["mean_layers"] < 6
    assert "tokens/s" in capsys.readouterr().err


def test_generate_prints_rows_for_prompts(tiny_checkpoints, capsys):
    assert main(["generate", "--model", str(tiny_checkpoints["opt"]), "--prompt", "w5 w6", "--max-new-tokens", "4",
                 "--max-layers", "4", "--min-layers", "2", "--window", "3"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["prompt"] == "w5 w6" and row["tokens"] == 4


def error_of(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    return err


def test_unknown_model_spec(capsys):
    assert "unknown model 'nope'" in error_of(["generate", "--model", "nope", "--prompt", "x"], capsys)


def test_folder_without_config(tmp_path, capsys):
    assert "no config.json" in error_of(["generate", "--model", str(tmp_path), "--prompt", "x"], capsys)


def test_corrupt_weights(tiny_checkpoints, tmp_path, capsys):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoints["llama"], bad)
    (bad / "model.safetensors").write_bytes(b"garbage" * 10)
    assert "corrupt weights" in error_of(["generate", "--model", str(bad), "--prompt", "w5"], capsys)


def test_unsupported_architecture(tiny_checkpoints, tmp_path, capsys):
    import shutil
    bad = tmp_path / "gpt2"
    shutil.copytree(tiny_checkpoints["llama"], bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")
    (bad / "config.json").write_text(json.dumps(cfg))
    err = error_of(["generate", "--model", str(bad), "--prompt", "w5"], capsys)
    assert "unsupported architecture 'GPT2LMHeadModel'" in err and "LlamaForCausalLM" in err and "OPTForCausalLM" in err


def test_malformed_jsonl_names_file_and_line(tiny_checkpoints, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"prompt": "w5"}\n{"prompt": \n')
    assert f"{inp}:2: invalid JSON" in error_of(["generate", "--model", str(tiny_checkpoints["llama"]),
                                                  "--input", str(inp)], capsys)
    inp.write_text('{"prompt": "w5"}\n\n{"text": "w6"}\n')
    assert f"{inp}:3: missing or empty field 'prompt'" in error_of(
        ["generate", "--model", str(tiny_checkpoints["llama"]), "--input", str(inp)], capsys)


def test_prompt_longer_than_positions(tiny_checkpoints, capsys):
    err = error_of(["generate", "--model", str(tiny_checkpoints["llama"]), "--prompt", " ".join(["w5"] * 125),
                    "--max-new-tokens", "8"], capsys)
    assert "133 positions, above the 128 of a KV row" in err


@pytest.mark.parametrize("flags, bound", [
    (["--max-layers", "2", "--min-layers", "4"], "min_layers"),
    (["--speedup", "0.5"], "speedup must be >= 1"),
    (["--speedup", "9"], "warm-up"),
    (["--max-layers", "4", "--min-layers", "1", "--warmup-layers", "2"], "warmup_layers"),
])
def test_impossible_schedule(tiny_checkpoints, capsys, flags, bound):
    assert bound in error_of(["generate", "--model", str(tiny_checkpoints["llama"]), "--prompt", "w5", *flags], capsys)


def test_console_script_exits_2_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "skipdecode.cli.main", "generate", "--model", str(tmp_path / "x"),
                           "--prompt", "hi"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
