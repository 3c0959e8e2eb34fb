"""`skipdecode bench`'s library: records, token counts, the per-layer fit, JSON and plot.
No timing assertions (speed belongs in benchmarks, not tests)."""

import json

import pytest

from skipdecode.models.backend import TorchBackend
from skipdecode.runtime.bench import (
    BenchConfig, LoopRunner, Record, fit_layer_cost, format_table, make_prompts, plot_records, run_bench,
    write_json,
)
from skipdecode.runtime.costmodel import Machine, ModelShape, decode_layers
from skipdecode.schedule import Schedule
from tiny import split_calls

FIELDS = ["backend", "batch_size", "speedup", "tokens_per_s", "ms_per_step", "mean_layers", "ideal_speedup",
          "measured_speedup", "efficiency"]


def test_fit_layer_cost_recovers_fixed_and_per_layer_cost():
    steps = [(n, 0.003 + 0.0005 * n) for n in (2, 3, 5, 6, 6)]
    fixed, per_layer = fit_layer_cost(steps)
    assert fixed == pytest.approx(0.003) and per_layer == pytest.approx(0.0005)
    assert fit_layer_cost([(6, 0.01), (6, 0.02)]) is None


def test_loop_runner_times_every_decode_forward(tiny_models):
    model = tiny_models["llama"][1].model
    runner = LoopRunner(TorchBackend(model))
    sched = Schedule(6, 5, 2, window=4)
    prompts = make_prompts(96, 3, 4)
    t = runner.run(prompts, sched, 7)
    assert t.tokens == 3 * 7
    assert [n for n, _ in t.steps] == decode_layers(sched, 7) == [5, 4, 3, 2, 2, 2]
    assert all(s > 0 for _, s in t.steps) and t.ttft_s > 0 and t.decode_s > 0
    # the layers the backend really ran: prefill at full depth, then the schedule's sets (no KV recomputed)
    prefill, decodes = split_calls(runner.backend.inner.calls)
    assert prefill == ((0, 3), tuple(range(6)))
    assert [tuple(l for l, (a, b) in enumerate(c[1]) if a < b) for c in decodes] == [
        sched.layers_for_step(t) for t in range(6)]
    assert all(r in ((0, 3), (0, 0)) for c in decodes for r in c[1])  # lockstep: every row or none


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core machine a 2-thread parallel region waits for a
    descheduled thread (milliseconds per attention call), which only makes tests slow."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_run_bench_records(tiny_models, one_thread):
    loaded = tiny_models["llama"][1]
    shape = ModelShape.from_dir(loaded.path)
    config = BenchConfig(batch_sizes=(1, 3), speedups=(2, 3), prompt_len=4, new_tokens=5, warmup=1, repeats=2)
    labels = []
    records = run_bench([LoopRunner(TorchBackend(loaded.model))], shape, config, Machine(), labels.append)
    assert len(labels) == 2 * 3 * 3  # batch sizes * speedups (1 added) * (warmup + repeats)
    assert [(r.backend, r.batch_size, r.speedup) for r in records] == [
        ("torch", b, s) for b in (1, 3) for s in (1.0, 2.0, 3.0)]
    schedules = config.schedules(6)
    for r in records:
        assert r.tokens == r.batch_size * 5
        assert r.tokens_per_s > 0 and r.ms_per_step > 0 and r.e2e_tokens_per_s > 0 and r.ttft_ms > 0
        layers = decode_layers(schedules[r.speedup], 5)
        assert r.mean_layers == pytest.approx(sum(layers) / len(layers), abs=1e-3)
        assert r.efficiency == pytest.approx(r.measured_speedup / r.ideal_speedup, abs=2e-3)
        assert r.us_per_layer_call is not None and r.vs_ort_genai is None
        if r.speedup == 1:
            assert r.measured_speedup == 1 and r.ideal_speedup == 1 and r.mean_layers == 6
        else:
            assert 1 < r.ideal_speedup < 6 / r.mean_layers
    table = format_table(records)
    assert "tok/s" in table and len(table.splitlines()) == 2 + len(records)


def record(backend, batch, speedup, tps):
    return Record(backend, batch, speedup, tps, 1000 / tps, 30 / speedup, speedup, speedup, 1.0, batch * 32, 50.0,
                  tps * 0.9, 2 * tps, "s")


def test_json_and_plot_are_written(tmp_path):
    records = [record(b, n, s, 10.0 * n * s) for b in ("torch", "ort-genai") for n in (1, 8, 32)
               for s in ((1, 2, 3) if b == "torch" else (1,))]
    write_json(tmp_path / "out" / "bench.json", records, BenchConfig(), Machine(), "tiny")
    doc = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert len(doc["records"]) == 12 and doc["model"] == "tiny" and doc["machine"]["cores"] >= 1
    assert all(set(FIELDS) <= set(r) for r in doc["records"])
    png = tmp_path / "plot" / "bench.png"
    plot_records(records, png, "tiny")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_config_validation():
    with pytest.raises(ValueError, match="new_tokens"):
        BenchConfig(new_tokens=1)
    with pytest.raises(ValueError, match="speedup"):
        BenchConfig(speedups=(9,)).schedules(6)  # 6 layers with 1 warm-up layer: at most 6x
    assert BenchConfig(speedups=(3, 2)).all_speedups == (1.0, 2.0, 3.0)


def test_bench_library_imports_neither_torch_nor_transformers():
    import subprocess
    import sys

    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'transformers'): raise ImportError(name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import skipdecode.runtime.bench, skipdecode.runtime.costmodel, skipdecode.runtime.ort_genai\n"
            "import skipdecode.cli.bench\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_static_schedules_drop_the_same_layers_every_step():
    schedules = BenchConfig(speedups=(2, 3), static=True).schedules(30)
    assert schedules[1.0].is_full
    for s, n in ((2.0, 15), (3.0, 10)):
        assert {schedules[s].layers_for_step(t) for t in range(40)} == {schedules[s].layer_set(n)}
