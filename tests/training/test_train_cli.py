"""`skipdecode train` end to end on a tiny model, and its one-line errors (exit 2)."""

import json
import random

import pytest

from train_helpers import e2e_rows, write_e2e
from skipdecode.cli.main import main


def run(capsys, *argv):
    code = main(["train", *map(str, argv)])
    return code, capsys.readouterr().err


def test_train_cli_evaluates_checkpoints_and_splits(train_llama, tmp_path, capsys):
    data = write_e2e(tmp_path / "d.csv", [(mr, ref) for mr, ref in e2e_rows(12) for _ in range(2)])
    out = tmp_path / "out"
    code, err = run(capsys, "--model", train_llama, "--data", data, "--out", out, "--speedup", 3, "--window", 8,
                    "--max-steps", 4, "--batch-size", 4, "--eval-every", 2, "--holdout", 0.25, "--eval-samples", 2,
                    "--save-every", 2, "--no-progress", "--lr", 1e-3)
    assert code == 0, err
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2, 4]
    assert all(r["dev_loss"] > 0 and len(r["samples"]["3.00x"]) == 2 for r in evals)
    assert evals[-1]["dev_loss"] < evals[0]["dev_loss"]
    split = json.loads((out / "split.json").read_text())
    assert len(split["heldout_groups"]) == 3 and split["heldout_examples"] == 6 and split["train_examples"] == 18
    assert (out / "final" / "model.safetensors").exists() and (out / "checkpoint-000002" / "trainer_state.pt").exists()
    assert json.loads((out / "final" / "skipdecode.json").read_text())["schedule"]["window"] == 8

    # `eval --heldout RUN` scores exactly the held-out MRs, both references of each grouped
    scored = tmp_path / "dev"
    assert main(["eval", "--model", str(out / "final"), "--heldout", str(out), "--max-new-tokens", "3",
                 "--out", str(scored)]) == 0
    rows = [json.loads(line) for line in (scored / "outputs.jsonl").read_text().splitlines()]
    assert sorted(r["input"] for r in rows) == sorted(split["heldout_groups"])
    assert all(len(r["references"]) == 2 for r in rows)
    assert "--heldout" in json.loads((scored / "report.json").read_text())["command"]


def test_drop_order_and_prompt_depth_are_trained_and_recorded(train_llama, tmp_path, capsys):
    """A range-trained checkpoint records its family even at the range's full-depth end, so that
    schedules solved from it for any speedup keep the order and prompt depth it was trained with."""
    from skipdecode.schedule import Schedule
    from skipdecode.training.schedules import ScheduleSampler

    data = write_e2e(tmp_path / "d.csv", e2e_rows(8))
    out = tmp_path / "out"
    code, err = run(capsys, "--model", train_llama, "--data", data, "--out", out, "--speedup-range", "1:3",
                    "--drop-order", "even", "--prompt-layers", 3, "--max-steps", 2, "--batch-size", 4, "--no-progress")
    assert code == 0, err
    saved = Schedule.from_dict(json.loads((out / "final" / "skipdecode.json").read_text())["schedule"])
    assert saved == Schedule.full(6, drop_order="even", prompt_layers=3) and saved.is_full
    solved = Schedule.for_speedup(6, 3, 32, **saved.family())
    assert solved.prompt_depth == 3 and solved.drop_order == saved.drop_order
    sampler = ScheduleSampler.for_range(6, 1, 3, drop_order="even", prompt_layers=3)
    draws = [sampler.sample(random.Random(i)) for i in range(8)]
    assert all(d.keep_order == saved.keep_order and d.prompt_depth == max(3, d.layers_at(0)) for d in draws)


def test_range_ends_are_trained_recorded_and_fixed_on_resume(train_llama, tmp_path, capsys):
    """--range-ends draws the range's ends for that share of batches; skipdecode.json records it, and a
    resume that gives another share is refused (the batches would come from another distribution)."""
    data = write_e2e(tmp_path / "d.csv", e2e_rows(8))
    out = tmp_path / "out"
    common = ("--model", train_llama, "--data", data, "--out", out, "--speedup-range", "1:3", "--batch-size", 4,
              "--save-every", 1, "--no-progress")
    code, err = run(capsys, *common, "--range-ends", 0.5, "--max-steps", 1)
    assert code == 0, err
    assert json.loads((out / "final" / "skipdecode.json").read_text())["range_ends"] == 0.5
    code, err = run(capsys, *common, "--max-steps", 2, "--resume")
    assert code == 2 and "range_ends=0.5" in err, err
    code, err = run(capsys, *common, "--range-ends", 0.5, "--max-steps", 2, "--resume")
    assert code == 0, err


def test_range_ends_share_of_batches():
    from skipdecode.training.schedules import ScheduleSampler

    rng = random.Random(0)
    plain = ScheduleSampler.for_range(6, 1, 3)
    ends = ScheduleSampler.for_range(6, 1, 3, ends=0.5)
    lo, hi = plain.eval_schedules().values()  # a uniform draw can solve to an end's schedule too
    at_ends = lambda s: sum(s.sample(rng) in (lo, hi) for _ in range(4000)) / 4000
    p = at_ends(plain)
    assert at_ends(ends) == pytest.approx(0.5 + 0.5 * p, abs=0.04) and p < 0.3


def test_augment_names_is_recorded_and_fixed_on_resume(train_llama, tmp_path, capsys):
    """--augment-names renames pairs after the held-out split (held-out pairs stay real); a resume
    that would train on other pairs (another share) is refused by the checkpoint's data digest."""
    rows = [(f"name[Venue {i}], area[riverside]", f"Venue {i} is by the riverside.") for i in range(12)]
    data = write_e2e(tmp_path / "d.csv", rows)
    out = tmp_path / "out"
    common = ("--model", train_llama, "--data", data, "--out", out, "--speedup", 2, "--batch-size", 4,
              "--holdout", 0.25, "--save-every", 1, "--no-progress")
    code, err = run(capsys, *common, "--augment-names", 1.0, "--augment-values", 0.5, "--max-steps", 1)
    assert code == 0, err
    info = json.loads((out / "final" / "skipdecode.json").read_text())
    assert info["augment_names"] == 1.0 and info["augment_values"] == 0.5
    split = json.loads((out / "split.json").read_text())
    assert split["augment_names"] == 1.0 and all(g.startswith("name[Venue ") for g in split["heldout_groups"])
    code, err = run(capsys, *common, "--augment-names", 0.5, "--augment-values", 0.5, "--max-steps", 2, "--resume")
    assert code == 2 and "the training pairs differ from the checkpoint's" in err, err
    code, err = run(capsys, *common, "--augment-names", 1.0, "--augment-values", 0.5, "--max-steps", 2, "--resume")
    assert code == 0, err


def test_entry_adapter_flag_trains_and_records_them(train_llama, tmp_path, capsys):
    data = write_e2e(tmp_path / "d.csv", e2e_rows(4))
    out = tmp_path / "out"
    code, err = run(capsys, "--model", train_llama, "--data", data, "--out", out, "--speedup", 3, "--window", 8,
                    "--entry-adapter", "full", "--max-steps", 1, "--batch-size", 4, "--no-progress")
    assert code == 0, err
    assert "entry adapters of rank full at layers [2, 3, 4, 5]" in err
    info = json.loads((out / "final" / "skipdecode.json").read_text())
    assert info["entry_adapter"] == {"rank": "full", "layers": [2, 3, 4, 5]}


@pytest.mark.parametrize("rows, argv, message", [
    ([("w3 w4", "w5"), ("w6", "")], [], "d.csv:3: missing or empty field 'ref'"),
    ([("w3", "w4")], ["--speedup-range", "3"], "--speedup-range '3': expected A:B"),
    ([("w3", "w4")], ["--speedup-range", "2:9"], "--speedup-range: 9 is above 6"),
    ([("w3", "w4")], ["--speedup", "3", "--max-layers", "4"], "give --speedup or --max-layers/--min-layers, not both"),
    ([("w3", "w4")], ["--eval-every", "2", "--holdout", "0"], "--eval-every needs evaluation data"),
    ([("w3", "w4")], ["--batch-size", "0"], "batch_size must be >= 1"),
    ([("w3", "w4")], ["--resume"], "--resume: no checkpoint"),
    ([("w3", "w4")], ["--speedup", "2", "--drop-order", "1,2,3"], "drop_order must list each droppable layer once"),
    ([("w3", "w4")], ["--speedup", "2", "--prompt-layers", "7"], "prompt_layers must be an integer in [1, num_layers=6]"),
    ([("w3", "w4")], ["--entry-adapter", "x"], "entry_adapter must be 0 (none), a positive rank or 'full', got 'x'"),
    ([("w3", "w4")], ["--range-ends", "0.5"], "--range-ends needs --speedup-range"),
    ([("w3", "w4")], ["--speedup-range", "1:3", "--range-ends", "1.5"], "--range-ends: 1.5 is not a share in [0, 1]"),
    ([("w3", "w4")], ["--augment-names", "2"], "--augment-names: 2 is not a share in [0, 1]"),
    ([("w3", "w4")], ["--augment-values", "-1"], "--augment-values: -1 is not a share in [0, 1]"),
])
def test_bad_input_is_one_line_and_exit_2(train_llama, tmp_path, capsys, rows, argv, message):
    data = write_e2e(tmp_path / "d.csv", rows)
    code, err = run(capsys, "--model", train_llama, "--data", data, "--out", tmp_path / "out", "--max-steps", 1,
                    "--no-progress", *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("skipdecode train: error: ") and message in err, err


def test_missing_data_file(tmp_path, capsys):
    code, err = run(capsys, "--data", tmp_path / "nope.csv", "--out", tmp_path / "out", "--max-steps", 1)
    assert code == 2 and err == f"skipdecode train: error: {tmp_path / 'nope.csv'}: no such file\n"
