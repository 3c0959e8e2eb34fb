"""`skipdecode tune` on a tiny run of `skipdecode train`: it scores only the MRs the run held out
(split.json), writes the chosen schedule into the checkpoint, and a resumed run still trains
under the schedule it was trained with."""

import json

from train_helpers import e2e_rows, write_e2e
from skipdecode.cli.main import main
from skipdecode.schedule import Schedule, read_schedule_file

TUNE = ["--target-speedup", "2", "--windows", "4,8", "--proxy-pairs", "8", "--finalists", "3", "--eval-mrs", "4",
        "--max-new-tokens", "6", "--batch-size", "4", "--no-progress"]


def test_tune_a_trained_run_on_its_heldout_mrs_then_resume(train_llama, tmp_path, capsys):
    data = write_e2e(tmp_path / "d.csv", [(mr, ref) for mr, ref in e2e_rows(16) for _ in range(2)])
    run = tmp_path / "run"
    train = ["train", "--model", str(train_llama), "--data", str(data), "--out", str(run), "--speedup", "2",
             "--holdout", "0.25", "--batch-size", "4", "--no-progress"]
    assert main([*train, "--max-steps", "2"]) == 0
    trained, facts = read_schedule_file(run / "final")
    assert trained.window == 32 and facts["step"] == 2
    held = set(json.loads((run / "split.json").read_text())["heldout_groups"])
    capsys.readouterr()

    assert main(["tune", "--model", str(run / "final"), "--data", str(data), *TUNE]) == 0
    out = run / "tune-2x"  # the default report folder: beside the checkpoint
    err = capsys.readouterr().err
    assert "split.json held out" in err and "may have trained" not in err
    report = json.loads((out / "candidates.json").read_text())
    scored = [c for c in report["candidates"] if c["rouge_l"] is not None]
    assert len(scored) == 5 and {c["role"] for c in scored} == {"full", "default", "candidate"}
    assert report["eval_mrs"] == 4 and all(s["input"] in held for c in scored for s in c["samples"])
    chosen = report["candidates"][report["chosen"]]
    schedule, facts = read_schedule_file(run / "final")
    assert schedule == Schedule.from_dict(chosen["schedule"]) and schedule.window in (1, 4, 8)
    assert facts["trained_schedule"] == trained.to_dict() and facts["step"] == 2
    assert facts["tuned"]["realised_speedup"] == chosen["gen_speedup"] and facts["tuned"]["heldout"] == report["heldout"]

    # the next step is trained under the schedule it was trained with, not the tuned one (a resume
    # checks the two agree); the new weights' skipdecode.json drops the tuned record
    assert main([*train, "--max-steps", "3", "--resume"]) == 0
    schedule, facts = read_schedule_file(run / "final")
    assert schedule == trained and facts["step"] == 3 and "tuned" not in facts


def test_finalists_short_on_their_own_outputs_are_re_solved(train_llama):
    """Outputs shorter than the references realise less than the search solved for: such a
    finalist is re-solved once on its own outputs' lengths (same n_0, window and decay, fewer
    min_layers) and scored again."""
    from skipdecode.data import Example, format_prompt
    from skipdecode.models import load_model
    from skipdecode.training.tune import tune
    from skipdecode.training.tune_space import TuneConfig

    loaded = load_model(str(train_llama))
    held = [Example(format_prompt(f"w{3 + i} w{40 + i}"), " ".join(f"w{10 + (i + k) % 50}" for k in range(12)),
                    f"mr{i}", "test") for i in range(6)]
    # references of 13 tokens: linear 4 -> 2 over 4 steps realises 2.6x; 3-token outputs realise 1.8x
    config = TuneConfig(2.0, shapes=("static", "linear"), windows=(4,), tolerance=0.5, finalists=2, max_new_tokens=3,
                        proxy_pairs=6, eval_mrs=6, batch_size=6, progress=False)
    result = tune(loaded.model, loaded.tokenizer, held, Schedule.full(6), config, log=lambda s: None)
    [short] = [c for c in result.candidates if c.finalist and c.shape == "linear" and not c.refined]
    assert (short.schedule.max_layers, short.schedule.min_layers, short.schedule.window) == (4, 2, 4)
    assert short.ref_speedup == 6 * 13 / 30 and short.gen_speedup < 2
    [again] = [c for c in result.candidates if c.refined]
    assert again.schedule == Schedule(6, 4, 1, window=4) and again.finalist and again.rouge_l is not None
    assert again.proxy_loss is not None and again.ref_speedup > short.ref_speedup
    assert result.chosen.gen_speedup >= 2 and result.met_on == "generated"
