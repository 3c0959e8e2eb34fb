"""The SkipDecode invariant: the training forward (per-layer prefix slicing) computes exactly
what cached decoding computes step by step, for any schedule; no KV is ever recomputed."""

import numpy as np
import pytest
import torch

from skipdecode.models.backend import TorchBackend
from skipdecode.schedule import Schedule

SCHEDULES = [
    Schedule.full(6),
    Schedule(6, 5, 2, window=4),
    Schedule(6, 6, 1, window=7, warmup_layers=1),
    Schedule(6, 4, 3, window=3, warmup_layers=2, decay="power", power=2.0),
    Schedule.constant(6, 3),
    Schedule(6, 3, 1, window=2, warmup_layers=0),
]


def teacher_forced(backend, prompts, targets, schedule):
    """Decode step by step feeding the targets; returns logits (B, N, V) at the generated columns."""
    B = len(prompts)
    P = max(len(p) for p in prompts)
    N = targets.shape[1]
    ids = np.zeros((B, P), dtype=np.int64)
    mask = np.zeros((B, P), dtype=bool)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):], mask[i, P - len(p):] = p, True
    backend.allocate(B, P + N)
    key_mask = np.zeros((B, P + N), dtype=bool)
    key_mask[:, :P] = mask
    pos = np.maximum(mask.cumsum(-1) - 1, 0)
    out = [backend.forward(ids, pos, key_mask[:, :P], 0, range(schedule.num_layers))]
    nxt = pos[:, -1] + 1
    for t in range(N - 1):
        key_mask[:, P + t] = True
        out.append(backend.forward(targets[:, t:t + 1], nxt[:, None] + t, key_mask[:, :P + t + 1], P + t,
                                   schedule.layers_for_step(t)))
    return np.stack(out, 1), ids, mask


@pytest.mark.parametrize("name", ["llama", "qwen2", "opt", "opt-350m-style"])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.describe())
def test_training_forward_equals_step_by_step_decoding(tiny_models, name, schedule):
    _, loaded = tiny_models[name]
    model = loaded.model
    prompts = [[5, 9, 14, 3, 22], [31, 4], [7, 7, 7]]
    rng = np.random.default_rng(0)
    N = 9
    targets = rng.integers(3, 96, (3, N))
    stepwise, ids, mask = teacher_forced(TorchBackend(model), prompts, targets, schedule)
    P = ids.shape[1]
    full_ids = torch.from_numpy(np.concatenate([ids, targets], 1))
    full_mask = torch.from_numpy(np.concatenate([mask, np.ones_like(targets, dtype=bool)], 1))
    with torch.no_grad():
        logits, _ = model(full_ids, full_mask, schedule=schedule, prompt_len=P)
    train = logits[:, P - 1:P - 1 + N].numpy()  # column P-1+t predicts target t
    assert np.abs(train - stepwise).max() < 1e-4


def test_skip_schedule_changes_the_logits(tiny_models):
    """Guard against a vacuous invariant: skipping must actually change the computation."""
    _, loaded = tiny_models["llama"]
    ids = torch.randint(3, 96, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, _ = loaded.model(ids)
        skip, _ = loaded.model(ids, schedule=Schedule(6, 4, 2, 4), prompt_len=4)
    assert torch.allclose(full[:, :4], skip[:, :4], atol=1e-6)  # the prompt runs every layer
    assert (full[:, 5:] - skip[:, 5:]).abs().max() > 1e-3


def test_cache_refuses_a_layer_that_skipped_earlier(tiny_models):
    _, loaded = tiny_models["llama"]
    backend = TorchBackend(loaded.model)
    backend.allocate(1, 8)
    ids = np.array([[5, 6, 7]])
    km = np.ones((1, 8), dtype=bool)
    backend.forward(ids, np.arange(3)[None], km[:, :3], 0, range(6))
    backend.forward(np.array([[9]]), np.array([[3]]), km[:, :4], 3, (0, 5))  # layers 1-4 skipped
    with pytest.raises(RuntimeError, match="recomputed"):
        backend.forward(np.array([[9]]), np.array([[4]]), km[:, :5], 4, (0, 4, 5))
