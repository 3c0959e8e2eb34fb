"""The cost model behind `skipdecode bench`'s ideal speedup: sizes match the real modules,
the LM head keeps a skip schedule's ideal below the layer ratio."""


import pytest

from skipdecode.runtime.costmodel import (
    SMOLLM2_135M, Machine, ModelShape, decode_layers, decode_seconds, ideal_speedup, step_seconds,
)
from skipdecode.schedule import Schedule


def numel(*modules):
    return sum(p.numel() for m in modules if m is not None for p in m.parameters())


@pytest.mark.parametrize("name", ["llama", "qwen2", "opt", "opt-350m-style"])
def test_parameter_counts_match_the_models(tiny_models, name):
    loaded = tiny_models[name][1]
    model = loaded.model
    shape = ModelShape.from_dir(loaded.path)
    assert shape.num_layers == model.num_layers
    assert shape.layer_params == numel(model.decoder_layers[0])
    if shape.family == "llama":
        head = numel(model.model.norm, model.lm_head)
        assert shape.embed_step_params == 0
    else:
        d = model.model.decoder
        head = numel(d.final_layer_norm, d.project_out, model.lm_head)
        assert shape.embed_step_params == numel(d.project_in)
    assert shape.head_params == head


@pytest.mark.parametrize("batch", [1, 8, 32])
def test_ideal_speedup_is_one_at_full_depth_and_grows_below_the_layer_ratio(batch):
    shape = ModelShape.from_hf_config(SMOLLM2_135M)
    ideal = {}
    for s in (1, 2, 3, 5):
        sched = Schedule.full(30) if s == 1 else Schedule.for_speedup(30, s, window=32)
        ideal[s] = ideal_speedup(shape, sched, batch, prompt_len=32, new_tokens=32)
        layers = decode_layers(sched, 32)
        assert len(layers) == 31
        assert ideal[s] <= 30 / (sum(layers) / len(layers)) + 1e-9  # the LM head does not shrink
    assert ideal[1] == pytest.approx(1.0)
    assert ideal[1] < ideal[2] < ideal[3] < ideal[5]


def test_batch_one_is_memory_bound_and_batch_32_compute_bound():
    shape, m = ModelShape.from_hf_config(SMOLLM2_135M), Machine()
    weights = (30 * shape.layer_params + shape.head_params) * 4
    # batch 1: one step reads every weight once (~538 MB) at 44 GB/s -> about 80 tokens/s at most
    assert step_seconds(shape, 1, 30, 48, m) == pytest.approx(weights / 44e9, rel=0.02)
    assert 75 < 31 / decode_seconds(shape, Schedule.full(30), 1, 32, 32, m) < 85
    # batch 32: 2 FLOPs per weight per row at 195 GFLOP/s -> about 700 tokens/s at most
    assert step_seconds(shape, 32, 30, 48, m) == pytest.approx(2 * 32 * weights / 4 / 195e9, rel=0.05)
    assert 650 < 32 * 31 / decode_seconds(shape, Schedule.full(30), 32, 32, 32, m) < 760


def test_shape_from_an_export_manifest(tmp_path):
    from fake_export import write_export

    write_export(tmp_path, dtype="float16", config=SMOLLM2_135M)
    shape = ModelShape.from_dir(tmp_path)
    assert shape.bytes_per_param == 2 and shape == ModelShape.from_hf_config(SMOLLM2_135M, 2)
