"""The HTTP load client (serve/loadgen.py) and `bench-serve --url` against a live `skipdecode serve`
on the tiny export: every request completes with exactly the tokens asked for."""

from __future__ import annotations

import json
import math

from servers import KEY

from skipdecode.cli.main import main
from skipdecode.runtime import serve_bench as sb
from skipdecode.serve import loadgen

JOBS = sb.chat_jobs(6, 96, 0, (2, 12), (4, 20))


def test_saturating_run_gets_every_token(live_server):
    url = live_server.url + "/v1"
    model = loadgen.served_model(url, KEY)
    rec, samples = loadgen.run(url, JOBS, float("inf"), model=model, label="ours", api_key=KEY, timeout_s=60)
    assert all(s.ok for s in samples), [s.error for s in samples]
    assert [s.tokens for s in samples] == [j.new_tokens for j in JOBS]  # EOS ignored
    assert rec.mode == "ours" and rec.speedup == "default" and rec.completed == 6
    assert rec.output_tokens == sum(j.new_tokens for j in JOBS)
    assert 0 < rec.ttft_p50 <= rec.ttft_p99 and 0 < rec.tpot_p50 <= rec.tpot_p99
    assert rec.mean_layers == 6 and math.isnan(rec.prefill_share)


def test_poisson_run_with_a_speedup(live_server):
    rec, samples = loadgen.run(live_server.url + "/v1", JOBS[:4], 20.0, speedup=3.0, api_key=KEY, timeout_s=60)
    assert all(s.ok for s in samples) and rec.rate == 20.0 and rec.speedup == "3"
    assert rec.output_tokens == sum(j.new_tokens for j in JOBS[:4])
    assert rec.mean_layers < 6


def test_refused_requests_are_samples_not_exceptions(live_server):
    rec, samples = loadgen.run(live_server.url + "/v1", JOBS[:2], float("inf"), api_key="wrong", timeout_s=30)
    assert rec.completed == 0 and not any(s.ok for s in samples)
    assert samples[0].error.startswith("HTTP 401")


def test_bench_serve_url(live_server, serve_export, tmp_path, capsys):
    out = tmp_path / "http.json"
    args = ["bench-serve", "--url", live_server.url + "/v1", "--api-key", KEY, "--tokenizer", str(serve_export),
            "--label", "ours", "--speedups", "default,3", "--requests", "6", "--rates", "20", "--duration", "0.2",
            "--prompt-tokens", "2,12", "--output-tokens", "4,20", "--warmup", "2", "--json", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    recs = report["records"]
    assert [(r["mode"], r["speedup"], r["rate"]) for r in recs] == [
        ("ours", "default", float("inf")), ("ours", "3", float("inf")), ("ours", "default", 20.0), ("ours", "3", 20.0)]
    assert all(r["completed"] == 6 and r["output_tokens"] == sum(j.new_tokens for j in JOBS) for r in recs[:2])
    assert recs[0]["prefill_share"] is None and report["model"] == "tiny-llama" and "api_key" not in report["settings"]
    assert "| ours | 3 | inf | 6 |" in capsys.readouterr().out


def test_bench_serve_url_bad_input_is_one_line(live_server, tmp_path, capsys):
    for extra in ([], ["--tokenizer", str(tmp_path)]):
        assert main(["bench-serve", "--url", live_server.url + "/v1", "--api-key", KEY,
                     "--json", str(tmp_path / "x.json"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "error" in err
    assert not (tmp_path / "x.json").exists()
