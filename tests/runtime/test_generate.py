"""The generation loop, driven through the PyTorch reference backend."""

import pytest

from skipdecode.errors import SkipDecodeError
from skipdecode.models.backend import TorchBackend
from skipdecode.runtime import GenerationConfig, SamplingConfig, generate_ids, stream_batch
from skipdecode.runtime.generate import StepEvent
from skipdecode.schedule import Schedule

PROMPTS = [[5, 9, 14, 3, 22, 7, 11], [31, 4], [8, 8, 40, 12], [60]]
SKIP = Schedule(6, 5, 2, window=6)


def run(model, prompts, schedule=SKIP, batch_size=4, **kw):
    cfg = GenerationConfig(**{"max_new_tokens": 10, **kw})
    return generate_ids(TorchBackend(model), prompts, schedule, cfg, eos_ids=[2], pad_id=0, batch_size=batch_size)


@pytest.mark.parametrize("name", ["llama", "opt"])
def test_batched_equals_single_under_skip_schedule(tiny_models, name):
    model = tiny_models[name][1].model
    batched = run(model, PROMPTS, batch_size=4)
    for p, row in zip(PROMPTS, batched):
        alone = run(model, [p], batch_size=1)[0]
        assert row.token_ids == alone.token_ids


def test_results_keep_input_order_when_batched_by_length(tiny_models):
    model = tiny_models["llama"][1].model
    one_by_one = [run(model, [p], batch_size=1)[0].token_ids for p in PROMPTS]
    assert [r.token_ids for r in run(model, PROMPTS, batch_size=3)] == one_by_one


def test_layer_calls_follow_the_schedule_and_kv_is_never_recomputed(tiny_models):
    model = tiny_models["llama"][1].model
    backend = TorchBackend(model)
    cfg = GenerationConfig(max_new_tokens=8, ignore_eos=True)
    *_, rows = stream_batch(backend, PROMPTS[:2], SKIP, cfg, [2], 0)
    P = len(PROMPTS[0])
    assert backend.layer_calls[0] == (0, tuple(range(6)))  # prefill: every layer once
    for t, (slot, layers) in enumerate(backend.layer_calls[1:]):
        assert slot == P + t and layers == SKIP.layers_for_step(t)
    assert len(backend.layer_calls) == 8  # 7 decode steps feed tokens 0..6; token 7 is not fed
    # every layer's cache length = prompt + the steps that ran it: nothing written twice
    assert backend.cache.lengths == [P + SKIP.steps_running_layer(l, 7) for l in range(6)]
    assert rows[0].mean_layers == pytest.approx(SKIP.mean_layers(8))


def test_skip_schedule_changes_outputs(tiny_models):
    model = tiny_models["llama"][1].model
    full = run(model, PROMPTS, schedule=Schedule.full(6), ignore_eos=True)
    skip = run(model, PROMPTS, schedule=Schedule.constant(6, 2), ignore_eos=True)
    assert [r.token_ids for r in full] != [r.token_ids for r in skip]
    assert all(r.mean_layers == 6 for r in full) and all(r.mean_layers == 2 for r in skip)


def test_eos_stops_a_row(tiny_models):
    model = tiny_models["llama"][1].model
    free = run(model, PROMPTS[:1], ignore_eos=True)[0]
    eos = free.token_ids[3]
    row = generate_ids(TorchBackend(model), PROMPTS[:1], SKIP, GenerationConfig(max_new_tokens=10),
                       eos_ids=[eos], pad_id=0)[0]
    assert row.token_ids == free.token_ids[: free.token_ids.index(eos) + 1]
    assert row.finish_reason == "eos"


def test_stop_check_ends_rows(tiny_models):
    model = tiny_models["llama"][1].model
    backend = TorchBackend(model)
    rows = generate_ids(backend, PROMPTS, SKIP, GenerationConfig(max_new_tokens=10, ignore_eos=True), [2], 0,
                        stop_check=lambda i, toks: len(toks) >= i + 2)
    assert [r.tokens for r in rows] == [2, 3, 4, 5] and all(r.finish_reason == "stop" for r in rows)


def test_sampling_is_seeded(tiny_models):
    model = tiny_models["opt"][1].model
    kw = dict(sampling=SamplingConfig(temperature=1.0, top_p=0.9, seed=7), ignore_eos=True)
    a, b = run(model, PROMPTS, **kw), run(model, PROMPTS, **kw)
    c = run(model, PROMPTS, sampling=SamplingConfig(temperature=1.0, top_p=0.9, seed=8), ignore_eos=True)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.token_ids for r in a] != [r.token_ids for r in c]


def test_stream_yields_every_step(tiny_models):
    model = tiny_models["llama"][1].model
    events = list(stream_batch(TorchBackend(model), PROMPTS[:2], SKIP,
                               GenerationConfig(max_new_tokens=5, ignore_eos=True), [2], 0))
    steps, rows = events[:-1], events[-1]
    assert all(isinstance(e, StepEvent) for e in steps) and len(steps) == 5
    assert [e.token_ids[0] for e in steps] == rows[0].token_ids


def test_prompt_too_long_is_refused_before_any_work(tiny_models):
    model = tiny_models["llama"][1].model  # 128 positions
    backend = TorchBackend(model)
    with pytest.raises(SkipDecodeError, match="above the model's 128"):
        generate_ids(backend, [[5] * 120], SKIP, GenerationConfig(max_new_tokens=10), [2], 0)
    assert backend.layer_calls == []


def test_schedule_for_another_depth_is_refused(tiny_models):
    with pytest.raises(SkipDecodeError, match="6"):
        run(tiny_models["llama"][1].model, PROMPTS, schedule=Schedule.full(30))


def test_prefill_time_is_the_prompt_call_shared_across_its_rows(tiny_models, monkeypatch):
    """On a clock that the prompt call moves by 10 s and each decode call by 1 s, the rows of a
    batch share exactly its 10 s of prefill (decode calls are not counted)."""
    from skipdecode.runtime import generate as gen

    clock = [0.0]
    monkeypatch.setattr(gen.time, "perf_counter", lambda: clock[0])

    class Clocked(TorchBackend):
        def forward(self, ids, positions, key_mask, slot, layers):
            clock[0] += 10.0 if slot == 0 else 1.0
            return super().forward(ids, positions, key_mask, slot, layers)

    rows = generate_ids(Clocked(tiny_models["llama"][1].model), PROMPTS, SKIP,
                        GenerationConfig(max_new_tokens=6), eos_ids=[2], pad_id=0, batch_size=2)
    assert [r.prefill_s for r in rows] == [5.0] * 4  # two batches of two rows
