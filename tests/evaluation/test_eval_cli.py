"""`skipdecode eval` end to end on a tiny random checkpoint through the PyTorch backend."""

import csv
import json

import pytest

from skipdecode.cli.main import main
from skipdecode.data import format_prompt, group_examples, load_examples
from skipdecode.evaluation.metrics import score
from skipdecode.schedule import Schedule

# E2E-style rows over the tiny word-level vocabulary: 4 distinct inputs, 1-3 references each
ROWS = [("w3 w4 w5", "w10 w11 w12 w13"), ("w6 w7", "w14 w15"), ("w3 w4 w5", "w16 w17 w18"),
        ("w8 w9 w20 w21 w22", "w23 w24"), ("w6 w7", "w25"), ("w3 w4 w5", "w26 w27"), ("w30", "w31 w32")]


def write_csv(path, rows):
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(["mr", "ref"])
        w.writerows(rows)
    return path


def read_outputs(out):
    return [json.loads(line) for line in (out / "outputs.jsonl").read_text().splitlines()]


def eval_args(ckpt, data, out, *extra):
    return ["eval", "--model", str(ckpt), "--data", str(data), "--max-new-tokens", "6", "--batch-size", "3",
            "--out", str(out), *extra]


def test_eval_full_depth_matches_transformers_greedy_and_scores_its_outputs(tiny_models, tiny_checkpoints, tmp_path):
    torch = pytest.importorskip("torch")
    data = write_csv(tmp_path / "test.csv", ROWS)
    out = tmp_path / "full"
    assert main(eval_args(tiny_checkpoints["llama"], data, out, "--speedup", "1")) == 0
    report = json.loads((out / "report.json").read_text())
    outputs = read_outputs(out)
    assert (out / "report.md").read_text().startswith("# Evaluation: full")

    # grouped by input, in first-seen order, all references kept
    assert [o["input"] for o in outputs] == ["w3 w4 w5", "w6 w7", "w8 w9 w20 w21 w22", "w30"]
    assert [len(o["references"]) for o in outputs] == [3, 2, 1, 1]
    assert report["num_inputs"] == 4 and report["num_references"] == 7
    assert all(o["prompt"] == format_prompt(o["input"]) for o in outputs)  # training's template

    # the generated ids are transformers' greedy ids, row by row
    hf, loaded = tiny_models["llama"]
    for o in outputs:
        ids = torch.tensor([loaded.tokenizer.encode(o["prompt"])])
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                          eos_token_id=2, pad_token_id=0)[0, ids.shape[1]:].tolist()
        assert o["token_ids"] == ref
        assert o["output"] == loaded.tokenizer.decode(ref).strip()

    # the report's scores are the metrics of these outputs
    s = score([o["output"] for o in outputs], [o["references"] for o in outputs])
    assert report["bleu"] == pytest.approx(s.bleu, abs=0.01)
    assert report["rouge_l"] == pytest.approx(s.rouge_l, abs=0.01)
    assert report["method"] == "full" and report["layer_speedup"] == 1.0 and report["mean_layers"] == 6
    assert report["tokens"] == sum(len(o["token_ids"]) for o in outputs) > 0
    assert report["wall_s"] > 0 and report["tokens_per_s"] == pytest.approx(report["tokens"] / report["wall_s"], rel=0.02)
    assert 0 < report["prefill_s"] < report["wall_s"] and report["decode_tokens_per_s"] > report["tokens_per_s"]


def test_eval_scores_100_when_one_reference_is_the_output(tiny_checkpoints, tmp_path):
    ckpt = tiny_checkpoints["llama"]
    first = tmp_path / "first"
    assert main(eval_args(ckpt, write_csv(tmp_path / "a.csv", ROWS), first)) == 0
    outputs = read_outputs(first)
    assert all(o["output"] for o in outputs)
    # each input gets its own output as a reference, among wrong ones (interleaved rows)
    rows = list(ROWS) + [(o["input"], o["output"]) for o in outputs]
    again = tmp_path / "again"
    assert main(eval_args(ckpt, write_csv(tmp_path / "b.csv", rows), again)) == 0
    report = json.loads((again / "report.json").read_text())
    assert report["bleu"] == pytest.approx(100.0) and report["rouge_l"] == pytest.approx(100.0)


def test_eval_skip_schedule_records_realised_layers(tiny_checkpoints, tmp_path):
    data = write_csv(tmp_path / "test.csv", ROWS)
    out = tmp_path / "skip"
    assert main(eval_args(tiny_checkpoints["llama"], data, out, "--max-layers", "5", "--min-layers", "2",
                          "--window", "8")) == 0
    report = json.loads((out / "report.json").read_text())
    outputs = read_outputs(out)
    schedule = Schedule(6, 5, 2, window=8)
    assert report["schedule"] == schedule.to_dict() and report["method"] == "skipdecode"
    assert report["target_speedup"] == pytest.approx(schedule.speedup, abs=1e-4)
    # token-weighted mean of n_t over every row's generated tokens
    tokens = [len(o["token_ids"]) for o in outputs]
    expected = sum(schedule.mean_layers(n) * n for n in tokens) / sum(tokens)
    assert report["mean_layers"] == pytest.approx(expected, abs=1e-4)
    assert report["layer_speedup"] == pytest.approx(6 / expected, abs=1e-3)
    # a realised speedup below the target: outputs end inside the window
    assert report["layer_speedup"] < report["target_speedup"]

    static = tmp_path / "static"
    assert main(eval_args(tiny_checkpoints["llama"], data, static, "--max-layers", "3", "--method", "drop3")) == 0
    r = json.loads((static / "report.json").read_text())
    assert r["method"] == "drop3" and r["mean_layers"] == 3


def test_eval_jsonl_limit_and_list_targets(tiny_checkpoints, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [
        {"q": "w3 w4", "a": ["w5 w6", "w7"]}, {"q": "w8", "a": "w9"}, {"q": "w3 w4", "a": "w10"},
        {"q": "w11", "a": "w12"}]) + "\n")
    examples = group_examples(load_examples(data, prompt_field="q", target_field="a"))
    assert [(e.prompt, e.references) for e in examples] == [  # JSONL prompts are used verbatim
        ("w3 w4", ["w5 w6", "w7", "w10"]), ("w8", ["w9"]), ("w11", ["w12"])]
    out = tmp_path / "j"
    assert main(eval_args(tiny_checkpoints["opt"], data, out, "--prompt-field", "q", "--target-field", "a",
                          "--limit", "2")) == 0
    assert [o["input"] for o in read_outputs(out)] == ["w3 w4", "w8"]


@pytest.mark.parametrize("content, message", [
    ('"mr","text"\n"a","b"\n', "bad.csv:1: missing column 'ref'"),
    ('"mr","ref"\n"w3","w4"\n"w5",""\n', "bad.csv:3: missing or empty field 'ref'"),
])
def test_bad_e2e_files_are_refused_with_file_and_line(tiny_checkpoints, tmp_path, capsys, content, message):
    data = tmp_path / "bad.csv"
    data.write_text(content)
    assert main(eval_args(tiny_checkpoints["llama"], data, tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert err.startswith("skipdecode eval: error:") and message in err and "bad.csv" in err
    assert not (tmp_path / "o").exists()


def test_backend_and_source_mismatches_are_refused(tiny_checkpoints, tmp_path, capsys):
    data = write_csv(tmp_path / "t.csv", ROWS)
    assert main(eval_args(tiny_checkpoints["llama"], data, tmp_path / "o", "--backend", "onnxruntime")) == 2
    assert "--export" in capsys.readouterr().err
    assert main(["eval", "--export", str(tmp_path), "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    assert "not an export folder" in capsys.readouterr().err


@pytest.mark.parametrize("split, message", [
    (None, "split.json: no such file"),
    ('{"data": []}', "not a training split (KeyError"),
    ('{"data": ["x.csv"], "heldout_groups": []}', "the run held nothing out"),
])
def test_bad_heldout_split_is_refused(tiny_checkpoints, tmp_path, capsys, split, message):
    if split is not None:
        (tmp_path / "split.json").write_text(split)
    argv = ["eval", "--model", str(tiny_checkpoints["llama"]), "--heldout", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("skipdecode eval: error:") and message in err and len(err.strip().splitlines()) == 1
