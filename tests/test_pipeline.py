"""The README's main job (skipdecode demo) end to end on a tiny model: fine-tune, export, serve
on ONNX Runtime, score; a second run re-uses every stage's output."""

from pathlib import Path

from skipdecode.errors import SkipDecodeError
from skipdecode.evaluation.metrics import corpus_bleu, rouge_l
from skipdecode.pipeline import DemoConfig, run_demo

import pytest

ROWS = [("w3 w4 w5", "w10 w11 w12"), ("w6 w7", "w12 w13"), ("w8 w9 w20", "w14 w15"), ("w30", "w56 w16 w17")]


def write_e2e(path: Path, rows) -> None:
    path.write_text('"mr","ref"\n' + "".join(f'"{mr}","{ref}"\n' for mr, ref in rows))


@pytest.fixture
def data(tmp_path) -> Path:
    """A tiny E2E folder: training rows and a test set, in the tiny word-level vocabulary."""
    folder = tmp_path / "e2e"
    folder.mkdir()
    write_e2e(folder / "devset.csv", ROWS * 8)
    write_e2e(folder / "testset_w_refs.csv", ROWS)
    return folder


def test_demo_pipeline(export_checkpoints, data, tmp_path, capsys):
    cfg = DemoConfig(model=str(export_checkpoints["llama-gqa"]), data=str(data), out=tmp_path / "out", steps=3,
                     speedup=2, window=4, any_budget=False, test_inputs=3, timed_inputs=2, batch_size=2,
                     max_new_tokens=6)
    results = run_demo(cfg)
    assert (tmp_path / "out" / "train" / "final" / "skipdecode.json").exists()
    assert (tmp_path / "out" / "export" / "manifest.json").exists()
    full, skip = results["full"], results["skip"]
    assert full["mean_layers"] == 6 and skip["mean_layers"] < 6
    assert skip["schedule"].speedup == pytest.approx(2, rel=0.1)  # the schedule it was fine-tuned under
    assert len(full["rows"]) == 3
    # scored against the first three test MRs' own references, on the printed (stripped) outputs
    refs = [[ref] for _, ref in ROWS[:3]]
    assert [e.references for e in results["examples"]] == refs
    for r in (full, skip):
        assert r["rouge_l"] == pytest.approx(rouge_l([row.text.strip() for row in r["rows"]], refs))
        assert r["bleu"] == pytest.approx(corpus_bleu([row.text.strip() for row in r["rows"]], refs))
    # every scored output is kept as an eval report, so the gap gets a paired interval
    from skipdecode.evaluation.compare import load_outputs, paired_bootstrap
    from skipdecode.evaluation.report import load_report

    reports = {name: load_report(tmp_path / "out" / name) for name in ("full", "skip")}
    outputs = {name: load_outputs(r) for name, r in reports.items()}
    for name, r in (("full", full), ("skip", skip)):
        assert reports[name]["num_inputs"] == 3 and reports[name]["rouge_l"] == pytest.approx(r["rouge_l"], abs=0.01)
        assert [o["output"] for o in outputs[name]] == [row.text.strip() for row in r["rows"]]
    d, lo, hi = paired_bootstrap(outputs["skip"], outputs["full"])
    assert d == pytest.approx(skip["rouge_l"] - full["rouge_l"], abs=0.05) and lo <= d <= hi
    out = capsys.readouterr().out
    assert "realised layer speedup" in out and "MR:   w3 w4 w5" in out
    assert "3 E2E test MRs scored, the first 2 timed" in out
    again = run_demo(cfg)  # stages already done are skipped, same greedy outputs
    assert [r.token_ids for r in again["skip"]["rows"]] == [r.token_ids for r in skip["rows"]]
    from dataclasses import replace
    with pytest.raises(SkipDecodeError, match=r"was fine-tuned with --augment-names 0.5: pass those flags"):
        run_demo(replace(cfg, augment_names=0.0))  # not re-used under another recipe's name
    with pytest.raises(SkipDecodeError, match=r"was fine-tuned with --seed 0: pass those flags"):
        run_demo(replace(cfg, seed=1))


def test_demo_any_budget_trains_a_range_and_serves_both_ends(export_checkpoints, data, tmp_path):
    import json

    cfg = DemoConfig(model=str(export_checkpoints["llama-gqa"]), data=str(data), out=tmp_path / "out", steps=2,
                     speedup=3, window=4, any_budget=True, test_inputs=2, batch_size=2, max_new_tokens=4,
                     entry_adapter="32")
    results = run_demo(cfg)
    info = json.loads((tmp_path / "out" / "train" / "final" / "skipdecode.json").read_text())
    assert info["speedup_range"] == [1.0, 3.0] and info["range_ends"] == DemoConfig.range_ends > 0
    # --entry-adapter: trained, exported and applied by ONNX Runtime (validated at export)
    manifest = json.loads((tmp_path / "out" / "export" / "manifest.json").read_text())
    assert info["entry_adapter"]["rank"] == 32 and manifest["entry_adapter"]["rank"] == 32
    assert manifest["graphs"]["adapters"]
    assert results["full"]["schedule"].is_full and results["skip"]["schedule"].speedup == pytest.approx(3, rel=0.2)


def test_demo_fine_tunes_the_steps_that_fit_its_budget(export_checkpoints, data, tmp_path, capsys):
    """--fine-tune-minutes: a budget spent by the first (warm-up) step stops the fine-tuning there,
    and the report names the steps run, not --steps. --seed seeds it, and is recorded."""
    import json

    cfg = DemoConfig(model=str(export_checkpoints["llama-gqa"]), data=str(data), out=tmp_path / "out", steps=5,
                     fine_tune_minutes=1e-6, speedup=2, window=4, any_budget=False, test_inputs=2, batch_size=2,
                     max_new_tokens=4, seed=3)
    run_demo(cfg)
    info = json.loads((tmp_path / "out/train/final/skipdecode.json").read_text())
    assert info["step"] == 1 and info["seed"] == 3
    start = json.loads((tmp_path / "out/train/log.jsonl").read_text().splitlines()[0])
    assert start["config"]["seed"] == 3 and start["config"]["max_minutes"] == 1e-6  # --seed reaches the fine-tuning
    assert "fine-tuned 1 step under" in capsys.readouterr().out


def test_demo_times_only_the_first_mrs_but_scores_them_all(export_checkpoints, data, tmp_path):
    """The timed subset's rows are the scored rows' first ones (greedy, same batches)."""
    from skipdecode.pipeline import serve_and_score

    kw = dict(model=str(export_checkpoints["llama-gqa"]), data=str(data), steps=2, speedup=2, window=4,
              any_budget=False, test_inputs=4, batch_size=2, max_new_tokens=5)
    split = run_demo(DemoConfig(out=tmp_path / "out", timed_inputs=2, **kw))
    whole = serve_and_score(DemoConfig(out=tmp_path / "out2", timed_inputs=4, **kw), tmp_path / "out" / "export", data)
    assert split["timed_inputs"] == 2 and whole["timed_inputs"] == 4
    for name in ("full", "skip"):
        assert [r.token_ids for r in split[name]["rows"]] == [r.token_ids for r in whole[name]["rows"]]
        assert len(split[name]["rows"]) == 4


@pytest.mark.parametrize("field, value, message", [("test_inputs", 0, "--test-inputs must be >= 1, got 0"),
                                                   ("steps", 0, "--steps must be >= 1, got 0"),
                                                   ("fine_tune_minutes", -1.0, "--fine-tune-minutes must be >= 0, got -1"),
                                                   ("timed_inputs", 0, "--timed-inputs must be >= 1, got 0"),
                                                   ("range_ends", 2.0, r"--range-ends: 2 is not a share in \[0, 1\]"),
                                                   ("augment_names", -1.0,
                                                    r"--augment-names: -1 is not a share in \[0, 1\]")])
def test_demo_refuses_bad_counts_and_shares(tmp_path, field, value, message):
    with pytest.raises(SkipDecodeError, match=message):
        run_demo(DemoConfig(out=tmp_path / "out", **{field: value}))


def test_demo_without_data_names_the_problem(tmp_path):
    with pytest.raises(SkipDecodeError, match="expected devset.csv"):
        run_demo(DemoConfig(data=str(tmp_path)))
