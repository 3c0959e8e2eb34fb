"""`skipdecode tune` end to end on a tiny random checkpoint: the chosen schedule lands in its
skipdecode.json (other facts and the trained schedule kept), the export's manifest carries it and
`run` uses it by default; bad input is one line and exit 2."""

import csv
import json
import shutil

import pytest

from skipdecode.cli.main import main
from skipdecode.schedule import Schedule, read_schedule_file, write_schedule_file

TRAINED = Schedule.full(6)  # a range-trained checkpoint records its full-depth end
FACTS = {"speedup_range": [1.0, 3.0], "base_model": "tiny", "step": 7}
SEARCH = ["--windows", "4,8", "--proxy-pairs", "12", "--finalists", "3", "--eval-mrs", "6", "--max-new-tokens",
          "6", "--batch-size", "4", "--holdout", "0.25", "--no-progress"]


@pytest.fixture
def tuned_setup(export_checkpoints, tmp_path):
    """A copy of a tiny checkpoint with a skipdecode.json, in a run folder without split.json, and
    an E2E-style dev file of 40 MRs with 2 references each."""
    ckpt = tmp_path / "run" / "final"
    shutil.copytree(export_checkpoints["llama-gqa"], ckpt)
    write_schedule_file(ckpt, TRAINED, FACTS)
    data = tmp_path / "dev.csv"
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["mr", "ref"])
        w.writerows([(f"w{3 + i} w{50 + i % 9}", f"w{10 + (i + k) % 40} w{20 + i % 30} w{60 + k}")
                     for i in range(40) for k in range(2)])
    return ckpt, data


def test_tune_writes_the_schedule_export_and_run_use_it(tuned_setup, tmp_path, capsys):
    ckpt, data = tuned_setup
    out = tmp_path / "tune"
    assert main(["tune", "--model", str(ckpt), "--data", str(data), "--target-speedup", "2", "--out", str(out),
                 *SEARCH]) == 0
    captured = capsys.readouterr()
    assert "may have trained on them" in captured.err  # no split.json: held out as the demo does
    assert "full depth" in captured.out and "*" in captured.out
    report = json.loads((out / "candidates.json").read_text())
    assert (out / "pareto.png").stat().st_size > 10_000
    chosen = report["candidates"][report["chosen"]]
    assert chosen["chosen"] and chosen["role"] != "full" and chosen["rouge_l"] is not None
    assert chosen["gen_speedup"] >= 2 or (report["met_on"] == "references" and chosen["ref_speedup"] >= 2)
    assert {c["shape"] for c in report["candidates"] if c["role"] == "candidate"} == {"static", "linear", "power"}
    schedule, facts = read_schedule_file(ckpt)
    assert schedule == Schedule.from_dict(chosen["schedule"]) and not schedule.is_full
    assert {k: facts[k] for k in FACTS} == FACTS and facts["trained_schedule"] == TRAINED.to_dict()
    tuned = facts["tuned"]
    assert tuned["target_speedup"] == 2 and tuned["out"] == str(out.resolve()) and tuned["eval_mrs"] == 6
    assert tuned["rouge_l"] == round(chosen["rouge_l"], 4) and tuned["candidates"] == sum(
        c["role"] == "candidate" for c in report["candidates"])

    # a second tune (another target) replaces the choice and keeps the schedule it was trained under
    assert main(["tune", "--model", str(ckpt), "--data", str(data), "--target-speedup", "3", "--out",
                 str(tmp_path / "tune3"), *SEARCH]) == 0
    schedule, facts = read_schedule_file(ckpt)
    assert facts["trained_schedule"] == TRAINED.to_dict() and facts["tuned"]["target_speedup"] == 3
    t = facts["tuned"]
    assert t["realised_speedup" if t["met_on"] == "generated" else "realised_speedup_references"] >= 3

    # export carries it into the manifest (and the facts into its skipdecode.json); run defaults to it
    export = tmp_path / "export"
    assert main(["export", "--model", str(ckpt), "--out", str(export), "--max-seq", "64"]) == 0
    manifest = json.loads((export / "manifest.json").read_text())
    assert Schedule.from_dict(manifest["schedule"]) == schedule
    assert read_schedule_file(export)[1]["tuned"] == facts["tuned"]
    capsys.readouterr()
    assert main(["run", "--export", str(export), "--prompt", "w5 w9 w14", "--max-new-tokens", "8"]) == 0
    captured = capsys.readouterr()
    row = json.loads(captured.out.splitlines()[0])
    assert row["mean_layers"] == round(schedule.mean_layers(row["tokens"]), 3) < 6
    assert schedule.describe() in captured.err

    # --dry-run writes the report and leaves the checkpoint alone
    before = (ckpt / "skipdecode.json").read_text()
    assert main(["tune", "--model", str(ckpt), "--data", str(data), "--target-speedup", "2", "--out",
                 str(tmp_path / "dry"), "--dry-run", *SEARCH]) == 0
    assert (ckpt / "skipdecode.json").read_text() == before and (tmp_path / "dry" / "candidates.json").exists()


def error_of(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("skipdecode tune: error: ")
    return err


def test_bad_input_is_one_line_and_exit_2(tuned_setup, tmp_path, capsys):
    ckpt, data = tuned_setup
    base = ["tune", "--data", str(data), "--out", str(tmp_path / "o"), *SEARCH]
    assert "not a checkpoint folder" in error_of([*base, "--model", str(tmp_path / "nope"), "--target-speedup", "2"],
                                                 capsys)
    assert "above 6" in error_of([*base, "--model", str(ckpt), "--target-speedup", "7"], capsys)
    assert "must be > 1" in error_of([*base, "--model", str(ckpt), "--target-speedup", "1"], capsys)
    assert "not a tune report" in error_of(["tune", "--model", str(ckpt), "--data", str(data), "--out", str(ckpt),
                                            "--target-speedup", "2"], capsys)
    test_set = tmp_path / "testset_w_refs.csv"
    shutil.copy(data, test_set)
    assert "test set" in error_of(["tune", "--model", str(ckpt), "--data", str(test_set), "--target-speedup", "2"],
                                  capsys)
    (ckpt.parent / "split.json").write_text(json.dumps({"data": [str(data)], "heldout_groups": ["not an MR"]}))
    assert "none of its 1 held-out groups" in error_of([*base, "--model", str(ckpt), "--target-speedup", "2"], capsys)
    assert not (tmp_path / "o").exists() and read_schedule_file(ckpt) == (TRAINED, FACTS)
