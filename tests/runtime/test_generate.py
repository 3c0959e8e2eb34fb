"""Generation on the engine, driven through the PyTorch reference backend."""

import pytest

from tiny import run_arrivals, solo_tokens, split_calls

from skipdecode.errors import SkipDecodeError
from skipdecode.models.backend import TorchBackend
from skipdecode.runtime import Engine, EngineConfig, GenerationConfig, Request, SamplingConfig, generate_ids
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
    rows = generate_ids(backend, PROMPTS[:2], SKIP, cfg, [2], 0, batch_size=2)
    prefill, decodes = split_calls(backend.calls)
    assert prefill == ((0, 2), tuple(range(6)))  # prefill: every layer once per row
    assert len(decodes) == 7  # 7 decode steps feed tokens 0..6; token 7 is not fed
    for t, (kind, ranges) in enumerate(decodes):
        assert kind == "decode"
        assert [l for l, (a, b) in enumerate(ranges) if a < b] == list(SKIP.layers_for_step(t))
        assert all((a, b) in ((0, 2), (0, 0)) for a, b in ranges)
    # every layer's KV length = prompt + the steps that ran it: nothing written twice
    for r, p in enumerate(sorted(PROMPTS[:2], key=len)):  # rows in admission order: by length
        assert backend.kv_lengths.held[:, r].tolist() == [len(p) + SKIP.steps_running_layer(l, 7) for l in range(6)]
    assert rows[0].mean_layers == pytest.approx(SKIP.mean_layers(8))


@pytest.mark.parametrize("name", ["llama", "opt"])
def test_continuous_batching_with_mixed_speedups_equals_alone(tiny_models, name):
    """Requests arriving at different steps, with their own schedules and lengths, share one
    running batch of 3 rows; each equals itself generated alone."""
    model = tiny_models[name][1].model
    schedules = [Schedule.full(6), SKIP, Schedule.constant(6, 3), Schedule(6, 4, 1, window=5)]
    reqs = [(3 * i, Request(p, 6 + 2 * i, schedules[i % 4], ignore_eos=i % 2 == 0))
            for i, p in enumerate(PROMPTS + PROMPTS[::-1])]
    engine = Engine(TorchBackend(model), [2], 0, EngineConfig(max_rows=3, max_len=32))
    run_arrivals(engine, reqs)
    moved = [c for c in engine.backend.calls if c[0] == "move"]
    assert moved  # rows of different depths traded places
    for _, r in reqs:
        got = engine.pop_result(r.request_id)
        assert got.token_ids == solo_tokens(TorchBackend(model), r, 32)


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


def test_stop_strings_end_rows(tiny_models):
    from skipdecode.tokenizer import Tokenizer

    loaded = tiny_models["llama"][1]
    tok = loaded.tokenizer
    free = run(loaded.model, PROMPTS[:1], ignore_eos=True)[0]
    text = tok.decode(free.token_ids)
    stop = text.split()[2]
    rows = generate_ids(TorchBackend(loaded.model), PROMPTS[:1], SKIP,
                        GenerationConfig(max_new_tokens=10, stop=(stop,), ignore_eos=True), [2], 0, tokenizer=tok)
    assert rows[0].finish_reason == "stop" and rows[0].text == text[: text.index(stop)]
    assert isinstance(tok, Tokenizer)


def test_sampling_is_seeded(tiny_models):
    model = tiny_models["opt"][1].model
    kw = dict(sampling=SamplingConfig(temperature=1.0, top_p=0.9, seed=7), ignore_eos=True)
    a, b = run(model, PROMPTS, **kw), run(model, PROMPTS, **kw)
    c = run(model, PROMPTS, sampling=SamplingConfig(temperature=1.0, top_p=0.9, seed=8), ignore_eos=True)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.token_ids for r in a] != [r.token_ids for r in c]


def test_prompt_too_long_is_refused_before_any_work(tiny_models):
    model = tiny_models["llama"][1].model  # 128 positions
    backend = TorchBackend(model)
    with pytest.raises(SkipDecodeError, match="130 positions, above the 128 of a KV row"):
        generate_ids(backend, [[5] * 120], SKIP, GenerationConfig(max_new_tokens=10), [2], 0)
    assert backend.calls == []


def test_schedule_for_another_depth_is_refused(tiny_models):
    with pytest.raises(SkipDecodeError, match="6"):
        run(tiny_models["llama"][1].model, PROMPTS, schedule=Schedule.full(30))


def test_prefill_time_is_the_prompt_call_shared_across_its_rows(tiny_models, monkeypatch):
    """On a clock that the prompt call moves by 10 s and each decode call by 1 s, the rows of a
    batch share exactly its 10 s of prefill (decode calls are not counted)."""
    from skipdecode.runtime import engine as eng

    clock = [0.0]
    monkeypatch.setattr(eng.time, "perf_counter", lambda: clock[0])

    class Clocked(TorchBackend):
        def prefill(self, *a):
            clock[0] += 10.0
            return super().prefill(*a)

        def decode(self, *a):
            clock[0] += 1.0
            return super().decode(*a)

    prompts = [(p * 3)[:3] for p in PROMPTS]  # one length: one call per prefill
    assert all(len(p) == 3 for p in prompts)
    rows = generate_ids(Clocked(tiny_models["llama"][1].model), prompts, SKIP,
                        GenerationConfig(max_new_tokens=6, ignore_eos=True), eos_ids=[2], pad_id=0, batch_size=2)
    assert [r.prefill_s for r in rows] == [5.0] * 4  # two prefills of two rows (rows free together)
    split = generate_ids(Clocked(tiny_models["llama"][1].model), [[5, 6], [5, 6, 7, 8, 9, 10, 11]], SKIP,
                         GenerationConfig(max_new_tokens=6, ignore_eos=True), eos_ids=[2], pad_id=0, batch_size=2)
    assert [r.prefill_s for r in split] == [10.0, 10.0]  # lengths 2 and 7: a call each, 10 s each
