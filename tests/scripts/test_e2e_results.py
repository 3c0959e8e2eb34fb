"""scripts/e2e_results.py: the 1,200-step budget's records join docs/results/e2e.json without
erasing the 300-step ones, and its intervals compare models of the same budget."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import e2e_results  # noqa: E402


@pytest.mark.parametrize("folder, tag", [("3x-s1200", "-s1200"), ("3x-s1200-w26", "-s1200"), ("1x", ""),
                                         ("3x-s1200-best", "-s1200-best"), ("3x-s1200-best-w26", "-s1200-best"),
                                         ("range1-5-s3", ""), ("3x-w26", "")])
def test_budget_tag(folder, tag):
    assert e2e_results.budget_tag(f"out/e2e/{folder}/report.json") == tag


def test_merged_keeps_other_budgets_and_replaces_rescored(tmp_path):
    old = [{"model": "3x", "report": "out/e2e/3x/report.json", "steps": 300, "layer_speedup": 2.76, "rouge_l": 55.5,
            "schedule": "linear 6->2/12 layers over 32 steps (warm-up 1), speedup 3.00x"},
           {"model": "1x", "report": "out/e2e/1x/report.json", "steps": 300, "layer_speedup": 1.0, "rouge_l": 60.0,
            "schedule": "full depth (30 layers)"}]
    path = tmp_path / "e2e.json"
    path.write_text(json.dumps(old))
    new = [{"model": "1x", "report": "out/e2e/1x/report.json", "steps": 300, "layer_speedup": 1.0, "rouge_l": 61.0,
            "drop_order": "paper", "prompt_layers": 30},
           {"model": "3x", "report": "out/e2e/3x-s1200/report.json", "steps": 1200, "layer_speedup": 2.8,
            "rouge_l": 58.0, "drop_order": "paper", "prompt_layers": 30}]
    got = e2e_results.merged(new, path)
    assert [(r["report"], r["rouge_l"]) for r in got] == [
        ("out/e2e/1x/report.json", 61.0), ("out/e2e/3x/report.json", 55.5), ("out/e2e/3x-s1200/report.json", 58.0)]
    assert all(r["drop_order"] == "paper" for r in got)
    assert [r["prompt_layers"] for r in got] == [30, 12, 30]  # an old record's prompt ran its model's every layer
    assert got[1]["checkpoint"] == "final"  # an old record gains the field at its default
    assert e2e_results.merged(new, tmp_path / "missing.json") == sorted(new, key=lambda r: r["steps"])


def test_intervals_compare_within_the_tagged_budget(tmp_path):
    def write(name, scores):
        (tmp_path / name).mkdir()
        rows = [{"input": str(i), "rouge_l": s} for i, s in enumerate(scores)]
        (tmp_path / name / "outputs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    write("1x", [50.0] * 20)
    write("3x", [50.0] * 20)
    write("1x-s1200", [60.0] * 20)
    write("3x-s1200", [58.0] * 20)
    write("1x-s1200-best", [61.0] * 20)
    write("3x-s1200-best", [58.0] * 20)
    short, long = e2e_results.intervals(tmp_path), e2e_results.intervals(tmp_path, "-s1200")
    best = e2e_results.intervals(tmp_path, "-s1200-best")
    assert "| 1x | 3x | +0.00 |" in short and "s1200" not in short
    assert "| 1x-s1200 | 3x-s1200 | +2.00 | [+2.00, +2.00] |" in long and "best" not in long
    assert "| 1x-s1200-best | 3x-s1200-best | +3.00 | [+3.00, +3.00] |" in best


def test_curves_one_column_per_run_of_the_budget(tmp_path):
    def log(name, evals):
        (tmp_path / name).mkdir()
        lines = [{"event": "train", "step": 1}] + [{"event": "eval", "step": s, "dev_loss": v} for s, v in evals]
        (tmp_path / name / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))

    log("e2e-smollm2-1x-s1200", [(100, 1.2), (200, 1.1)])
    log("e2e-smollm2-3x-s1200", [(100, 2.0)])
    log("e2e-smollm2-3x", [(50, 3.0)])
    got = e2e_results.curves(tmp_path, "-s1200")
    assert got.splitlines() == ["| step | 1x | 3x |", "|---|---|---|", "| 100 | 1.200 | 2.000 |", "| 200 | 1.100 | - |"]
    assert e2e_results.curves(tmp_path, "").splitlines()[0] == "| step | 3x |"
    (tmp_path / "empty").mkdir()
    assert e2e_results.curves(tmp_path / "empty", "-s1200") == ""


def test_targets_read_the_budgets_reports(tmp_path):
    """2x against 1x, the best model realising 2.8-3.0x against 1x, and the best decaying one in that
    band against static3x, each from the tagged budget's folders only; a missing report drops its line."""
    def write(name, score, speedup, mx, mn):
        (tmp_path / name).mkdir()
        rows = [{"input": str(i), "rouge_l": score} for i in range(10)]
        (tmp_path / name / "outputs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        report = {"rouge_l": score, "layer_speedup": speedup, "schedule": {"max_layers": mx, "min_layers": mn}}
        (tmp_path / name / "report.json").write_text(json.dumps(report))

    write("1x-s1200", 60.0, 1.0, 30, 30)
    write("2x-s1200", 59.5, 1.9, 22, 8)
    write("3x-s1200", 55.0, 2.9, 15, 5)
    write("3x-s1200-w26", 56.0, 2.92, 15, 5)
    write("3x-s1200-best", 59.0, 2.9, 15, 5)   # another budget tag: not compared here
    write("static3x-s1200", 57.0, 3.0, 10, 10)
    write("5x-s1200", 58.5, 4.5, 9, 3)          # outside the band
    lines = e2e_results.targets(tmp_path, "-s1200").splitlines()[2:]
    assert lines == [
        "| 2x within 1.0 of 1x | 1x minus 2x-s1200: +0.50 [+0.50, +0.50] | yes |",
        "| best at 2.8-3.0x within 2.0 of 1x | 1x minus static3x-s1200 (3.00x): +3.00 [+3.00, +3.00] | no |",
        "| decay at or above static | 3x-s1200-w26 (2.92x) minus static3x-s1200 (3.00x): -1.00 [-1.00, -1.00] | no |"]
    assert e2e_results.targets(tmp_path, "-s600") == ""


def test_merged_fills_a_step_from_the_same_runs_records(tmp_path):
    """A schedule scored through ONNX Runtime alone has no PyTorch report to name its training step:
    it takes the step of the same model, budget and checkpoint, and nothing else's."""
    def rec(model, folder, steps):
        return {"model": model, "report": f"out/e2e/{folder}/report.json", "steps": steps, "layer_speedup": 1.0,
                "rouge_l": 50.0, "drop_order": "paper", "prompt_layers": 30}

    path = tmp_path / "e2e.json"
    path.write_text(json.dumps([rec("range1-5", "range1-5-s2", None), rec("range1-5", "range1-5-s1", 300)]))
    new = [rec("3x", "3x-s1200-best", 500), rec("3x", "3x-s1200", None), rec("2x", "2x-s1200", None)]
    got = {r["report"].split("/")[2]: r["steps"] for r in e2e_results.merged(new, path)}
    assert got == {"range1-5-s2": 300, "range1-5-s1": 300, "3x-s1200-best": 500, "3x-s1200": None, "2x-s1200": None}
