"""Entry adapters: the identity at initialisation, applied only to the tokens that enter a layer
from a skipped one, and the same map in the training forward, the engine through the PyTorch
reference (TorchBackend) and the model's own cached step (forward_step), for any drop order and
prompt depth."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from skipdecode.errors import SkipDecodeError
from skipdecode.models.adapters import parse_rank
from skipdecode.schedule import Schedule
from tiny import forward_vs_decoding, with_adapters

FAMILIES = ["llama", "opt"]
RANKS = [4, "full"]
SCHEDULES = [
    Schedule(6, 5, 2, window=4),
    Schedule(6, 5, 2, window=4, drop_order="even"),
    Schedule(6, 5, 2, window=4, drop_order=(2, 4, 1, 5, 3), prompt_layers=5),
    Schedule.constant(6, 3, drop_order="even", prompt_layers=3),
    Schedule(6, 3, 1, window=2, warmup_layers=0, drop_order=(5, 0, 3, 1, 4, 2), prompt_layers=1),
    Schedule(6, 3, 2, window=4, prompt_layers=4),
]


def logits(model, ids, schedule):
    with torch.no_grad():
        return model(ids, schedule=schedule, prompt_len=4)[0]


IDS = torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("rank", RANKS)
def test_adapters_are_the_identity_at_init(tiny_models, name, rank):
    _, loaded = tiny_models[name]
    model = with_adapters(loaded, rank, range(1, 6), scale=None)
    for schedule in SCHEDULES:
        torch.testing.assert_close(logits(model, IDS, schedule), logits(loaded.model, IDS, schedule), rtol=0, atol=0)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.describe())
def test_training_forward_equals_teacher_forced_decoding(tiny_models, name, rank, schedule):
    _, loaded = tiny_models[name]
    model = with_adapters(loaded, rank, schedule.entry_layers)
    assert forward_vs_decoding(model, schedule) < 1e-4


@settings(max_examples=12, deadline=None)
@given(st.permutations(range(1, 6)), st.integers(1, 6), st.integers(1, 4), st.integers(1, 6))
def test_forward_equals_decoding_in_any_drop_order(tiny_models, order, max_layers, window, prompt):
    _, loaded = tiny_models["llama"]
    min_layers = 1 + (max_layers - 1) // 2
    schedule = Schedule(6, max_layers, min_layers, window, drop_order=order, prompt_layers=prompt)
    model = with_adapters(loaded, 3, schedule.entry_layers)
    assert forward_vs_decoding(model, schedule, N=5) < 1e-4


def step_logits(model, ids, mask, targets, schedule):
    """Teacher-forced decoding through ``model.forward_step`` (B, N, V): the prompt (left-padded
    ``ids``, ``mask``) at its depth, then target t at step t's layers."""
    B, P = ids.shape
    N = targets.shape[1]
    cache = model.new_cache(B, P + N)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, P)
    out = [model.forward_step(ids, positions, mask, cache, 0, schedule.prompt_layer_set())]
    for t in range(N - 1):
        key_mask = torch.cat([mask, torch.ones(B, t + 1, dtype=torch.bool)], 1)  # (B, P + t + 1)
        pos = positions[:, -1:] + 1 + t  # (B, 1)
        out.append(model.forward_step(targets[:, t:t + 1], pos, key_mask, cache, P + t, schedule.layers_for_step(t)))
    return torch.stack(out, 1)  # (B, N, V)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("schedule", SCHEDULES[1:5], ids=lambda s: s.describe())
def test_forward_step_applies_them_as_the_training_forward_does(tiny_models, name, schedule):
    _, loaded = tiny_models[name]
    model = with_adapters(loaded, 4, schedule.entry_layers)
    ids = torch.tensor([[0, 0, 5, 9, 14], [31, 4, 7, 7, 7]])
    mask = ids != 0
    targets = torch.randint(3, 96, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        train, _ = model(torch.cat([ids, targets], 1), torch.cat([mask, torch.ones_like(targets, dtype=torch.bool)], 1),
                         schedule=schedule, prompt_len=5)
    torch.testing.assert_close(step_logits(model, ids, mask, targets, schedule), train[:, 4:11], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rank", RANKS)
def test_only_entering_tokens_are_mapped(tiny_models, rank):
    """Guard against a vacuous parity: non-zero adapters change the skipping tokens' logits, and
    nothing that runs every layer (full depth, a full-depth prompt)."""
    _, loaded = tiny_models["llama"]
    model = with_adapters(loaded, rank, range(1, 6))
    torch.testing.assert_close(logits(model, IDS, None), logits(loaded.model, IDS, None), rtol=0, atol=0)
    skip = Schedule(6, 4, 2, window=4)
    got, base = logits(model, IDS, skip), logits(loaded.model, IDS, skip)
    torch.testing.assert_close(got[:, :4], base[:, :4], rtol=0, atol=1e-6)  # the prompt runs every layer
    assert (got[:, 4:] - base[:, 4:]).abs().max() > 1e-2


def test_a_schedule_entering_a_layer_without_an_adapter_is_refused(tiny_models):
    """With one warm-up layer every order enters a subset of the paper's layers 2..L-1; without
    warm-up, layer 1 too."""
    _, loaded = tiny_models["llama"]
    paper = Schedule(6, 5, 2, window=4)
    model = with_adapters(loaded, 4, paper.entry_layers)
    assert paper.entry_layers == (2, 3, 4, 5)
    no_warmup = Schedule(6, 5, 2, window=4, warmup_layers=0)
    with pytest.raises(SkipDecodeError, match=r"layer 1 is entered .* cover layers \[2, 3, 4, 5\]"):
        logits(model, IDS, no_warmup)


@pytest.mark.parametrize("value", ["-1", "x", "1.5", ""])
def test_bad_ranks_are_refused(value):
    with pytest.raises(ValueError, match="entry_adapter must be 0"):
        parse_rank(value)


def test_low_rank_init_follows_the_seed(tiny_models):
    _, loaded = tiny_models["opt"]
    a, b, c = (with_adapters(loaded, 4, (2, 3), scale=None, seed=s).entry_adapters for s in (0, 0, 1))
    assert a.spec() == {"rank": 4, "layers": [2, 3]}
    assert torch.equal(a["2"].down.weight, b["2"].down.weight)
    assert not torch.equal(a["2"].down.weight, c["2"].down.weight)
    assert not a["2"].up.weight.any()
    assert a["3"].down.weight.shape == (4, 32)


def torch_batch_against_alone(model, seed: int) -> list[bool]:
    """Random arrivals and per-request schedules (mixed depths: some rows enter a layer others ran
    the layer below) on one 3-row continuous batch of the PyTorch reference: whether each
    request's greedy ids equal its own alone."""
    import numpy as np

    from skipdecode.models.backend import TorchBackend
    from skipdecode.runtime.engine import Engine, EngineConfig
    from skipdecode.runtime.request import Request
    from tiny import run_arrivals, solo_tokens

    rng = np.random.default_rng(seed)
    family = [Schedule.full(6), Schedule(6, 5, 2, window=6), Schedule.constant(6, 3), Schedule(6, 4, 1, window=4)]
    reqs = [(int(rng.integers(0, 10)), Request(rng.integers(3, 90, int(rng.integers(1, 10))).tolist(),
                                               int(rng.integers(2, 12)), family[int(rng.integers(0, len(family)))],
                                               ignore_eos=True))
            for _ in range(6)]
    engine = Engine(TorchBackend(model), [2], 0, EngineConfig(max_rows=3, max_len=32))
    run_arrivals(engine, reqs)
    return [engine.pop_result(r.request_id).token_ids == solo_tokens(TorchBackend(model), r, 32) for _, r in reqs]


def test_the_reference_maps_only_entering_rows_of_a_mixed_batch(tiny_models, monkeypatch):
    """The PyTorch reference in a continuous batch equals each request alone, and mapping every
    row of a layer that some row enters (not only those that skipped the layer below) breaks it."""
    from skipdecode.models import backend
    from skipdecode.runtime.backend import entering_rows

    _, loaded = tiny_models["llama"]
    model = with_adapters(loaded, 3, range(1, 6), scale=0.5)
    assert all(ok for seed in range(3) for ok in torch_batch_against_alone(model, seed))
    monkeypatch.setattr(backend, "entering_rows", lambda rows, below: [rows] if entering_rows(rows, below) else [])
    assert not all(ok for seed in range(3) for ok in torch_batch_against_alone(model, seed))
