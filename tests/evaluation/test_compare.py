"""`skipdecode compare` and the report files: table, JSON and plot written from reports."""

import json

import pytest

from skipdecode.cli.main import main
from skipdecode.evaluation.compare import add_measured_speedup, markdown_table, summary_records
from skipdecode.errors import SkipDecodeError
from skipdecode.evaluation.report import load_report, render_markdown

BASE = dict(backend="onnxruntime", device="cpu", batch_size=8, data="testset_w_refs.csv", num_inputs=630,
            max_new_tokens=64)
REPORTS = [
    dict(BASE, method="full", target_speedup=1.0, layer_speedup=1.0, bleu=60.4, rouge_l=63.2, tokens_per_s=100.0),
    dict(BASE, method="skipdecode", target_speedup=3.0, layer_speedup=2.6, bleu=38.4, rouge_l=51.0,
         tokens_per_s=240.0, training={"steps": 150}),
    dict(BASE, method="skipdecode", target_speedup=2.0, layer_speedup=1.8, bleu=55.0, rouge_l=60.0,
         tokens_per_s=170.0),
    dict(BASE, method="static", target_speedup=3.0, layer_speedup=3.0, bleu=42.1, rouge_l=53.7, tokens_per_s=270.0),
    dict(BASE, method="full", backend="torch", target_speedup=1.0, layer_speedup=1.0, bleu=60.4, rouge_l=63.2,
         tokens_per_s=20.0),
]


def write_reports(tmp_path, reports=REPORTS):
    paths = []
    for i, r in enumerate(reports):
        d = tmp_path / f"r{i}"
        d.mkdir(parents=True)
        (d / "report.json").write_text(json.dumps(r))
        paths.append(str(d))
    return paths


def test_measured_speedup_is_over_the_full_report_of_the_same_backend_and_batch():
    out = add_measured_speedup(REPORTS + [dict(REPORTS[1], batch_size=32)])
    assert [r["measured_speedup"] for r in out] == [1.0, 2.4, 1.7, 2.7, 1.0, None]
    assert all(r["decode_speedup"] is None for r in out)  # reports without decode-only tokens/s
    decode = [dict(REPORTS[0], decode_tokens_per_s=200.0), dict(REPORTS[1], decode_tokens_per_s=500.0),
              REPORTS[2]]
    assert [r["decode_speedup"] for r in add_measured_speedup(decode)] == [1.0, 2.5, None]


def test_table_lists_every_report_full_first():
    records = summary_records(REPORTS)
    table = markdown_table(records)
    lines = table.splitlines()
    assert len(lines) == 2 + len(REPORTS)
    assert lines[2].startswith("| full |")
    assert "| skipdecode | onnxruntime | 2.00x | 1.80x | 1.70x | - | 55.00 | 60.00 |" in table
    assert [r["steps"] for r in records if r["method"] == "skipdecode"] == [None, 150]


def test_compare_cli_writes_table_json_and_a_readable_plot(tmp_path, capsys):
    matplotlib = pytest.importorskip("matplotlib")
    import matplotlib.image

    paths = write_reports(tmp_path)
    png, js = tmp_path / "plots" / "e2e.png", tmp_path / "e2e.json"
    assert main(["compare", *paths, "--plot", str(png), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 2 + len(REPORTS) and "| static | onnxruntime | 3.00x |" in out
    records = json.loads(js.read_text())
    assert {(r["method"], r["backend"], r["target_speedup"]) for r in records} == {
        (r["method"], r["backend"], r["target_speedup"]) for r in REPORTS}
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 300 and image.shape[1] > 800
    assert main(["compare", *paths, "--plot", str(tmp_path / "m.png"), "--x", "measured"]) == 0
    assert (tmp_path / "m.png").stat().st_size > 10_000
    assert main(["compare", *paths, "--plot", str(tmp_path / "d.png"), "--x", "decode"]) == 2  # no decode figures
    assert "--x decode needs a full-depth report" in capsys.readouterr().err
    with_decode = write_reports(tmp_path / "dec", [dict(r, decode_tokens_per_s=2 * r["tokens_per_s"]) for r in REPORTS])
    assert main(["compare", *with_decode, "--plot", str(tmp_path / "d.png"), "--x", "decode"]) == 0
    assert (tmp_path / "d.png").stat().st_size > 10_000 and "| 2.40x | 2.40x |" in capsys.readouterr().out


def test_compare_refuses_what_is_not_a_report(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"method": "full"}))
    assert main(["compare", str(bad)]) == 2
    assert "not an evaluation report (missing backend" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "none")]) == 2
    assert "no report.json" in capsys.readouterr().err


def test_compare_warns_when_reports_used_different_data(tmp_path, capsys):
    paths = write_reports(tmp_path, [REPORTS[0], dict(REPORTS[1], num_inputs=20)])
    assert main(["compare", *paths]) == 0
    assert "reports differ in num_inputs" in capsys.readouterr().err


def test_report_markdown_holds_the_numbers_and_escapes_tables():
    report = load_report_like()
    md = render_markdown(report, [{"input": "name[A|B]", "output": "x", "rouge_l": 50.0, "references": ["y"]}])
    assert "| BLEU | 38.40 |" in md and "| realised layer speedup | 2.60x |" in md
    assert "name[A\\|B]" in md


def load_report_like():
    return dict(REPORTS[1], model="m", export=None, schedule_description="linear 15->5/30", num_references=4693,
                meteor=None, meteor_note="n/a", num_layers=30, mean_layers=11.54, tokens=100,
                mean_output_tokens=25.0, wall_s=1.0, finish_reasons={"eos": 630}, bleu_signature="sig",
                machine={"platform": "linux", "cpu_count": 2})


def test_load_report_reads_a_folder_or_a_file(tmp_path):
    (path,) = write_reports(tmp_path, [REPORTS[0]])
    assert load_report(path)["bleu"] == 60.4
    assert load_report(f"{path}/report.json")["_path"].endswith("report.json")


def _with_outputs(tmp_path, scores):
    paths = write_reports(tmp_path, [dict(REPORTS[0], method=m) for m in scores])
    for p, rows in zip(paths, scores.values()):
        lines = [json.dumps({"input": f"mr{i}", "output": "o", "rouge_l": v}) for i, v in enumerate(rows)]
        (tmp_path / p / "outputs.jsonl").write_text("\n".join(lines) + "\n")
    return paths


def test_paired_bootstrap_intervals_against_the_first_report(tmp_path, capsys):
    from skipdecode.evaluation.compare import paired_bootstrap

    same = [{"input": str(i), "rouge_l": float(i)} for i in range(50)]
    assert paired_bootstrap(same, same) == (0.0, 0.0, 0.0)
    ahead = [dict(r, rouge_l=r["rouge_l"] + 2.0) for r in same]
    assert paired_bootstrap(ahead, same) == pytest.approx((2.0, 2.0, 2.0))
    d, lo, hi = paired_bootstrap([dict(r, rouge_l=r["rouge_l"] * 1.1) for r in same], same)
    assert d == pytest.approx(2.45) and lo < d < hi  # a mean of per-input gains 0 to 4.9: a real interval
    with pytest.raises(SkipDecodeError, match="same inputs"):
        paired_bootstrap(same[::-1], same)

    paths = _with_outputs(tmp_path, {"full": [60.0, 50.0, 40.0], "a": [61.0, 51.0, 41.0]})
    assert main(["compare", *paths, "--paired"]) == 0
    assert "ROUGE-L a (" in (out := capsys.readouterr().out) and "+1.00, 95% interval [+1.00, +1.00] over 3" in out
    (tmp_path / paths[1] / "outputs.jsonl").unlink()
    assert main(["compare", *paths, "--paired"]) == 2
    assert "no outputs.jsonl beside the report" in capsys.readouterr().err
