"""The ONNX Runtime backend (runtime/onnxruntime_backend.py) chaining a tiny export, against the
TorchBackend through the same generation loop. Lives beside the export tests because it needs
their exports (tests/conftest.py)."""

from __future__ import annotations

import json
import shutil
import textwrap

import numpy as np
import pytest

from tiny import EXPORTS, run_arrivals, run_without_torch, solo_tokens, split_calls

from skipdecode.errors import SkipDecodeError
from skipdecode.models.backend import TorchBackend
from skipdecode.runtime import GenerationConfig, generate_ids
from skipdecode.schedule import SCHEDULE_FILE, Schedule

PROMPTS = [[5, 9, 17, 3, 44, 8, 21], [7, 7, 30], [12, 50, 61, 2 + 4, 90, 33, 14, 15, 16, 71, 40], [88]]


@pytest.mark.parametrize("name", ["llama-gqa", "opt-gqa", "llama-trt", "opt350-std"])
def test_greedy_matches_torch_under_skip_schedule(tiny_export, name):
    from skipdecode.runtime.onnxruntime_backend import OnnxRuntimeBackend

    folder, loaded, _ = tiny_export(name)
    L = loaded.model.num_layers
    schedule = Schedule(L, max_layers=L - 1, min_layers=2, window=10, warmup_layers=1)
    config = GenerationConfig(max_new_tokens=14, ignore_eos=True)
    ref = generate_ids(TorchBackend(loaded.model), PROMPTS, schedule, config, [2], 0, batch_size=4)
    ort_b = OnnxRuntimeBackend(folder)
    got = generate_ids(ort_b, PROMPTS, schedule, config, [2], 0, batch_size=4)
    assert [r.token_ids for r in got] == [r.token_ids for r in ref]
    # KV never recomputed: the prefill runs every layer once, step t exactly the schedule's set
    prefill, decodes = split_calls(ort_b.calls)
    assert prefill == ((0, 4), tuple(range(L)))
    assert [[l for l, (a, b) in enumerate(c[1]) if a < b] for c in decodes] == [
        list(schedule.layers_for_step(t)) for t in range(len(decodes))]
    # a second engine over the same buffers reuses nothing stale
    got2 = generate_ids(ort_b, PROMPTS[:2], schedule, config, [2], 0, batch_size=2)
    assert [r.token_ids for r in got2] == [r.token_ids for r in ref[:2]]


@pytest.mark.parametrize("name", ["llama-gqa", "opt-gqa", "opt350-std"])
@pytest.mark.parametrize("seed", range(8))
def test_continuous_batching_equals_alone(tiny_export, name, seed):
    """Random arrivals, prompt lengths, max tokens and per-request speedups on one 3-row batch:
    each request's greedy ids equal the PyTorch reference run alone (8 cases per export)."""
    from skipdecode.runtime.engine import Engine, EngineConfig
    from skipdecode.runtime.onnxruntime_backend import OnnxRuntimeBackend
    from skipdecode.runtime.request import Request

    folder, loaded, _ = tiny_export(name)
    L = loaded.model.num_layers
    rng = np.random.default_rng(seed)
    family = [Schedule.full(L), Schedule(L, L - 1, 2, window=6), Schedule.constant(L, 3), Schedule(L, 4, 1, window=4)]
    reqs = [(int(rng.integers(0, 12)), Request(rng.integers(3, 90, int(rng.integers(1, 12))).tolist(),
                                               int(rng.integers(1, 14)), family[int(rng.integers(0, 4))],
                                               ignore_eos=bool(rng.integers(0, 2))))
            for _ in range(int(rng.integers(3, 8)))]
    engine = Engine(OnnxRuntimeBackend(folder), [2], 0, EngineConfig(max_rows=3, max_len=40))
    run_arrivals(engine, reqs)
    ref = TorchBackend(loaded.model)
    for _, r in reqs:
        assert engine.pop_result(r.request_id).token_ids == solo_tokens(ref, r, 40)


@pytest.mark.parametrize("name", ["llama-gqa", "opt350-std"])
def test_an_export_in_another_drop_order_and_prompt_depth_matches_torch(export_checkpoints, tmp_path, name):
    """A checkpoint's schedule (skipdecode.json) carries its drop order and prompt depth into the
    export's manifest; the ONNX Runtime backend runs exactly its layer sets (the prompt's too) and
    its greedy ids equal the PyTorch reference's, also for a speedup solved in the same family."""
    from skipdecode.export import ExportConfig, export_model
    from skipdecode.models import load_model
    from skipdecode.runtime.api import Runtime

    ckpt_name, target = EXPORTS[name]
    ckpt = tmp_path / "ckpt"
    shutil.copytree(export_checkpoints[ckpt_name], ckpt)
    schedule = Schedule(6, 4, 2, window=10, drop_order=(3, 1, 4, 2, 5), prompt_layers=5)  # layer 3 never runs
    (ckpt / SCHEDULE_FILE).write_text(json.dumps({"schedule": schedule.to_dict()}))
    loaded = load_model(str(ckpt))
    assert loaded.schedule == schedule
    export_model(str(ckpt), tmp_path / "x", ExportConfig(target=target, max_seq=96), loaded=loaded, log=lambda s: None)
    rt = Runtime.load(tmp_path / "x")
    assert rt.backend.manifest.schedule == rt.schedule() == schedule
    config = GenerationConfig(max_new_tokens=14, ignore_eos=True)
    ref = generate_ids(TorchBackend(loaded.model), PROMPTS, schedule, config, [2], 0, batch_size=4)
    got = generate_ids(rt.backend, PROMPTS, rt.schedule(), config, [2], 0, batch_size=4)
    assert [r.token_ids for r in got] == [r.token_ids for r in ref]
    prefill, decodes = split_calls(rt.backend.calls)
    assert prefill == ((0, 4), (0, 1, 2, 4, 5)) and schedule.prompt_layer_set() == (0, 1, 2, 4, 5)
    assert [[l for l, (a, b) in enumerate(c[1]) if a < b] for c in decodes] == [
        list(schedule.layers_for_step(t)) for t in range(len(decodes))]
    fast = rt.schedule(speedup=3)
    assert (fast.drop_order, fast.prompt_layers) == (schedule.drop_order, 5) and fast.layers_at(0) < 4
    mixed = [schedule, fast, fast, schedule]
    ref = generate_ids(TorchBackend(loaded.model), PROMPTS, mixed, config, [2], 0, batch_size=4)
    got = generate_ids(rt.backend, PROMPTS, mixed, config, [2], 0, batch_size=4)
    assert [r.token_ids for r in got] == [r.token_ids for r in ref]


def test_errors(tiny_export):
    from skipdecode.runtime.onnxruntime_backend import OnnxRuntimeBackend

    folder, loaded, _ = tiny_export("llama-gqa")
    b = OnnxRuntimeBackend(folder)
    with pytest.raises(SkipDecodeError, match="KV buffers hold 96"):
        b.allocate(1, 97)
    b.allocate(1, 16)
    b.prefill(0, np.array([[5, 6, 7]]), np.array([3]), range(6))
    skip = [(0, 1), (0, 0), (0, 0), (0, 0), (0, 1), (0, 1)]
    b.decode(np.array([8]), np.array([3]), skip)
    with pytest.raises(RuntimeError, match="layer 2 row 0 holds 3 keys"):  # a skipped layer may not come back
        b.decode(np.array([9]), np.array([4]), [(0, 1), (0, 0), (0, 1), (0, 0), (0, 0), (0, 1)])
    with pytest.raises(SkipDecodeError, match="KV buffer overflow: 65 positions needed, 64 allocated"):
        b.decode(np.array([9]), np.array([64]), [(0, 0)] * 6)
    with pytest.raises(SkipDecodeError, match=r"rows \[0, 2\) outside the 1 allocated"):
        b.prefill(0, np.array([[5], [6]]), np.array([1, 1]), range(6))


def test_backend_imports_neither_torch_nor_transformers(tiny_export):
    folder, loaded, _ = tiny_export("opt-gqa")
    prompts, config = [[5, 6, 7], [9]], GenerationConfig(max_new_tokens=3, ignore_eos=True)
    proc = run_without_torch(textwrap.dedent(f"""
        from skipdecode.runtime.onnxruntime_backend import OnnxRuntimeBackend
        from skipdecode.runtime import GenerationConfig, generate_ids
        from skipdecode.schedule import Schedule
        b = OnnxRuntimeBackend({str(folder)!r})
        rows = generate_ids(b, {prompts!r}, Schedule.full(6), GenerationConfig(max_new_tokens=3, ignore_eos=True),
                            [2], 0)
        print([r.token_ids for r in rows])
    """))
    assert proc.returncode == 0, proc.stderr[-2000:]
    ref = generate_ids(TorchBackend(loaded.model), prompts, Schedule.full(6), config, [2], 0)
    assert proc.stdout.strip() == str([r.token_ids for r in ref])  # the reference's tokens, 3 per row
    assert all(len(r.token_ids) == 3 for r in ref)
