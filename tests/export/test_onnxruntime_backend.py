"""The ONNX Runtime backend (runtime/onnxruntime_backend.py) chaining a tiny export, against the
TorchBackend through the same generation loop. Lives beside the export tests because it needs
their exports (tests/conftest.py)."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from tiny import run_without_torch

from skipdecode.errors import SkipDecodeError
from skipdecode.models.backend import TorchBackend
from skipdecode.runtime import GenerationConfig, generate_ids
from skipdecode.schedule import Schedule

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
    calls = ort_b.layer_calls
    assert calls[0] == (0, tuple(range(L)))
    P = max(len(p) for p in PROMPTS)
    assert calls[1:] == [(P + t, schedule.layers_for_step(t)) for t in range(len(calls) - 1)]
    # a second batch of another shape reuses nothing stale
    got2 = generate_ids(ort_b, PROMPTS[:2], schedule, config, [2], 0, batch_size=2)
    assert [r.token_ids for r in got2] == [r.token_ids for r in ref[:2]]


def test_errors(tiny_export):
    from skipdecode.runtime.onnxruntime_backend import OnnxRuntimeBackend

    folder, loaded, _ = tiny_export("llama-gqa")
    b = OnnxRuntimeBackend(folder)
    with pytest.raises(SkipDecodeError, match="KV buffers hold 96"):
        b.allocate(1, 97)
    b.allocate(1, 16)
    ids = np.array([[5, 6, 7]])
    b.forward(ids, np.arange(3)[None], np.ones((1, 3), bool), 0, range(6))
    b.forward(np.array([[8]]), np.array([[3]]), np.ones((1, 4), bool), 3, (0, 4, 5))
    with pytest.raises(RuntimeError, match="layer 2 holds KV for 3 slots"):  # a skipped layer may not come back
        b.forward(np.array([[9]]), np.array([[4]]), np.ones((1, 5), bool), 4, (0, 2, 5))


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
