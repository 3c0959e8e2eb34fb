"""The SkipDecode invariant: the training forward (per-layer prefix slicing) computes exactly
what cached decoding computes step by step, for any schedule, drop order and prompt depth; no KV
is ever recomputed."""

import numpy as np
import pytest
import torch

from skipdecode.models.backend import TorchBackend
from skipdecode.schedule import Schedule
from tiny import forward_vs_decoding

SCHEDULES = [
    Schedule.full(6),
    Schedule(6, 5, 2, window=4),
    Schedule(6, 6, 1, window=7, warmup_layers=1),
    Schedule(6, 4, 3, window=3, warmup_layers=2, decay="power", power=2.0),
    Schedule.constant(6, 3),
    Schedule(6, 3, 1, window=2, warmup_layers=0),
    # other drop orders, and prompts that skip the layers no generated token runs
    Schedule(6, 5, 2, window=4, drop_order="even"),
    Schedule(6, 5, 2, window=4, drop_order=(2, 4, 1, 5, 3), prompt_layers=5),
    Schedule(6, 4, 2, window=3, warmup_layers=2, decay="power", drop_order=(5, 3, 2, 4), prompt_layers=4),
    Schedule.constant(6, 3, drop_order="even", prompt_layers=3),
    Schedule(6, 3, 1, window=2, warmup_layers=0, drop_order=(5, 0, 3, 1, 4, 2), prompt_layers=1),
    Schedule(6, 3, 2, window=4, prompt_layers=4),
]


@pytest.mark.parametrize("name", ["llama", "qwen2", "opt", "opt-350m-style"])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.describe())
def test_training_forward_equals_step_by_step_decoding(tiny_models, name, schedule):
    _, loaded = tiny_models[name]
    assert forward_vs_decoding(loaded.model, schedule) < 1e-4


def test_skip_schedule_changes_the_logits(tiny_models):
    """Guard against a vacuous invariant: skipping must actually change the computation."""
    _, loaded = tiny_models["llama"]
    ids = torch.randint(3, 96, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, _ = loaded.model(ids)
        skip, _ = loaded.model(ids, schedule=Schedule(6, 4, 2, 4), prompt_len=4)
    assert torch.allclose(full[:, :4], skip[:, :4], atol=1e-6)  # the prompt runs every layer
    assert (full[:, 5:] - skip[:, 5:]).abs().max() > 1e-3
    with torch.no_grad():  # a prompt depth changes the prompt's columns; another order the rest
        shallow, _ = loaded.model(ids, schedule=Schedule(6, 4, 2, 4, prompt_layers=4), prompt_len=4)
        even, _ = loaded.model(ids, schedule=Schedule(6, 4, 2, 4, drop_order="even"), prompt_len=4)
    assert (shallow[:, :4] - skip[:, :4]).abs().max() > 1e-3
    assert torch.allclose(even[:, :4], skip[:, :4], atol=1e-6) and (even[:, 5:] - skip[:, 5:]).abs().max() > 1e-3


def test_cache_refuses_a_layer_that_skipped_earlier(tiny_models):
    _, loaded = tiny_models["llama"]
    backend = TorchBackend(loaded.model)
    backend.allocate(1, 8)
    backend.prefill(0, np.array([[5, 6, 7]]), np.array([3]), range(6))
    run = lambda layers: [(0, 1) if l in layers else (0, 0) for l in range(6)]  # noqa: E731
    backend.decode(np.array([9]), np.array([3]), run((0, 5)))  # layers 1-4 skipped
    with pytest.raises(RuntimeError, match="recomputed"):
        backend.decode(np.array([9]), np.array([4]), run((0, 4, 5)))
