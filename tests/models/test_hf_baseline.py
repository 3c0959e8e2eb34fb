"""transformers' generate as `skipdecode bench --compare hf`: exact token counts, same greedy tokens."""

import pytest

from skipdecode.models.backend import TorchBackend
from skipdecode.models.hf_baseline import HFGenerateRunner
from skipdecode.runtime import GenerationConfig, generate_ids
from skipdecode.runtime.bench import make_prompts
from skipdecode.schedule import Schedule


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_hf_runner_generates_exactly_new_tokens(tiny_checkpoints, cache):
    runner = HFGenerateRunner(str(tiny_checkpoints["llama"]), cache)
    t = runner.run(make_prompts(96, 3, 5), Schedule.full(6), 6)
    assert t.tokens == 3 * 6 and t.ttft_s > 0 and t.decode_s > 0 and t.steps == []
    with pytest.raises(ValueError, match="full depth"):
        runner.run(make_prompts(96, 1, 5), Schedule(6, 4, 2, window=3), 6)


def test_hf_runner_produces_the_reference_greedy_tokens(tiny_checkpoints, tiny_models, monkeypatch):
    """The baseline does the same work as the reference: capture its output ids and compare."""
    runner = HFGenerateRunner(str(tiny_checkpoints["llama"]))
    prompts = make_prompts(96, 2, 5, seed=3)
    outputs = []
    generate = runner.model.generate
    monkeypatch.setattr(runner.model, "generate", lambda *a, **k: outputs.append(generate(*a, **k)) or outputs[-1])
    runner.run(prompts, Schedule.full(6), 6)
    ref = generate_ids(TorchBackend(tiny_models["llama"][1].model), prompts.tolist(), Schedule.full(6),
                       GenerationConfig(6, ignore_eos=True), eos_ids=[], pad_id=0)
    compared = 0
    for got, row in zip(outputs[0][:, 5:].tolist(), ref):  # min_new_tokens masks EOS: compare up to it
        end = row.token_ids.index(2) if 2 in row.token_ids else len(row.token_ids)
        assert got[:end] == row.token_ids[:end]
        compared += end
    assert compared >= 6
