"""`skipdecode bench-serve` on a tiny export: every configuration completes its requests, the
records carry what docs/SERVING.md reports, and the schedules really skip."""

import json

from skipdecode.cli.main import main
from skipdecode.runtime import serve_bench as sb


def test_bench_serve_records(tiny_export, tmp_path, capsys):
    folder, _, _ = tiny_export("llama-gqa")
    out = tmp_path / "serve.json"
    args = ["bench-serve", "--export", str(folder), "--requests", "6", "--max-batch", "3", "--rates", "20",
            "--duration", "0.3", "--prompt-tokens", "2,12", "--output-tokens", "4,20", "--window", "8",
            "--overhead", "--json", str(out), "--plot", str(tmp_path / "serve.png")]
    assert main(args) == 0
    report = json.loads(out.read_text())
    recs = report["records"]
    assert [(r["mode"], r["speedup"]) for r in recs[:4]] == [("static", "1"), ("continuous", "1"),
                                                             ("continuous", "3"), ("continuous", "mix")]
    jobs = sb.chat_jobs(6, 96, 0, (2, 12), (4, 20))
    for r in recs[:4]:  # saturating: every request done, every token generated (EOS ignored)
        assert r["completed"] == 6 and r["rate"] == float("inf")
        assert r["output_tokens"] == sum(j.new_tokens for j in jobs)
        assert abs(r["output_tokens_per_s"] * r["wall_s"] / r["output_tokens"] - 1) < 0.3  # both are rounded
        assert r["ttft_p50"] <= r["ttft_p99"] and r["tpot_p50"] <= r["tpot_p99"]
    assert recs[1]["mean_layers"] == 6 and recs[2]["mean_layers"] < recs[3]["mean_layers"] < 6
    assert {r["rate"] for r in recs[4:]} == {20.0} and len(recs) == 8
    assert [o["batch"] for o in report["range_overhead"]] == [3, 3]
    assert (tmp_path / "serve.png").stat().st_size > 0
    assert "| static | 1 | inf | 6 |" in capsys.readouterr().out


def test_bench_serve_bad_input_is_one_line(tiny_export, tmp_path, capsys):
    folder, _, _ = tiny_export("llama-gqa")
    for extra in (["--modes", "lockstep"], ["--prompt-tokens", "9,2"], ["--speedups", "1,99"]):
        assert main(["bench-serve", "--export", str(folder), "--json", str(tmp_path / "x.json"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "error" in err
    assert not (tmp_path / "x.json").exists()


def test_bench_serve_e2e_workload(tiny_export, tmp_path):
    """E2E test MR prompts with output lengths drawn from the references (../shared/data/e2e)."""
    folder, _, _ = tiny_export("llama-gqa")
    out = tmp_path / "e2e.json"
    assert main(["bench-serve", "--export", str(folder), "--workload", "e2e", "--modes", "continuous",
                 "--speedups", "1", "--requests", "4", "--max-batch", "2", "--rates", "50", "--duration", "0.1",
                 "--json", str(out)]) == 0
    recs = json.loads(out.read_text())["records"]
    assert [r["completed"] for r in recs] == [4, 5]
    assert all(10 <= r["output_tokens"] / r["completed"] <= 60 for r in recs)  # E2E references' lengths
