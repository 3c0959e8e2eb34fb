"""SmoothQuant: the smoothed graph computes the same function, its projection inputs shrink to the
predicted per-channel range, and a massive activation that breaks static int8 is undone by it."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from skipdecode.calibration import smooth
from skipdecode.calibration.capture import CaptureConfig, ShardSet, calibration_prompts, capture
from skipdecode.calibration.graphs import int8_static
from skipdecode.calibration.quantize import QuantConfig, quantize_export
from skipdecode.errors import SkipDecodeError
from skipdecode.export.contract import graph_name
from skipdecode.schedule import Schedule

SITES = {"llama-gqa": [(["qkv.weight_t"], "input_layernorm.weight"),
                       (["gate_proj.weight_t", "up_proj.weight_t"], "post_attention_layernorm.weight"),
                       (["down_proj.weight_t"], "up_proj.weight_t")],
         "opt-gqa": [(["qkv.weight_t"], "self_attn_layer_norm.weight"),
                     (["fc1.weight_t"], "final_layer_norm.weight")]}
"""Per family: (projections of one input, the first initializer taking 1/s). o_proj (after
attention) and OPT's fc2 (after ReLU) have nonlinear producers and are left alone."""


@pytest.fixture(scope="module")
def shards_of(tiny_export, train_csv, tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            folder, loaded, _ = tiny_export(name)
            L = loaded.model.num_layers
            out = tmp_path_factory.mktemp("calib") / name
            capture(folder, calibration_prompts(train_csv, 4), Schedule(L, max_layers=L - 1, min_layers=2, window=6),
                    out, CaptureConfig(4, 0, 4, 8), show_progress=False)
            cache[name] = (folder, ShardSet(out))
        return cache[name]

    return get


def _init(model, name):
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


def _outputs(path, feeds):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [sess.run(None, f) for f in feeds]


@pytest.mark.parametrize("name", ["llama-gqa", "opt-gqa"])
def test_smoothing_keeps_the_function_and_shrinks_inputs_as_predicted(shards_of, tmp_path, name):
    folder, shards = shards_of(name)
    src, dst = folder / "layer_001.onnx", tmp_path / "s.onnx"
    feeds = list(shards.feeds("layer_001"))
    model = onnx.load(src)
    found = smooth.sites(model)
    assert [(s.weights, (s.fold_vectors + s.fold_columns)[0]) for s in found] == SITES[name]

    alpha = 0.5
    before = smooth.channel_max(src, lambda: iter(feeds), [s.activation for s in found])
    report = smooth.smooth(src, dst, lambda: iter(feeds), alpha)
    after = smooth.channel_max(dst, lambda: iter(feeds), [s.activation for s in found])
    smoothed = onnx.load(dst)
    for site in found:  # max|x_j / s_j| = (max|x_j| max|W_j|)^(1 - alpha); W_j's rows took s
        w = np.max([np.abs(_init(model, n)).max(axis=1) for n in site.weights], axis=0)
        s = smooth.scales(before[site.activation], w, alpha)
        np.testing.assert_allclose(after[site.activation], before[site.activation] / s, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(_init(smoothed, site.weights[0]), _init(model, site.weights[0]) * s[:, None],
                                   rtol=1e-5, atol=1e-7)
        assert report[site.activation][0] == pytest.approx(float(before[site.activation].max()), rel=1e-6)
    for a, b in zip(_outputs(src, feeds), _outputs(dst, feeds)):  # hidden_out and the KV: unchanged
        for x, y in zip(a, b):
            np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-4 * float(np.abs(x).max()))


def test_a_massive_channel_breaks_static_int8_and_smoothing_undoes_it(shards_of, tmp_path):
    """Scale channel 3 of up_proj's output by 300 and down_proj's row 3 by 1/300: the same layer,
    but down_proj's input now has a massive channel that one static scale must cover."""
    folder, shards = shards_of("llama-gqa")
    model = onnx.load(folder / "layer_001.onnx")
    for name, scale in (("up_proj.weight_t", (slice(None), 3)), ("down_proj.weight_t", (3, slice(None)))):
        init = next(i for i in model.graph.initializer if i.name == name)
        w = numpy_helper.to_array(init).copy()
        w[scale] *= 300.0 if name.startswith("up") else 1 / 300.0
        init.CopyFrom(numpy_helper.from_array(w, name))
    massive = tmp_path / "massive.onnx"
    onnx.save(model, massive)
    feeds = list(shards.feeds("layer_001"))
    ref = [o[0] for o in _outputs(folder / "layer_001.onnx", feeds)]
    np.testing.assert_allclose(_outputs(massive, feeds)[0][0], ref[0], rtol=1e-4, atol=1e-4)

    def error(path):
        got = [o[0] for o in _outputs(path, feeds)]
        return max(float(np.abs(g - r).max() / np.abs(r - f["hidden"]).max()) for g, r, f in zip(got, ref, feeds))

    int8_static(massive, tmp_path / "plain.onnx", lambda: iter(feeds), per_channel=True, symmetric_activations=False)
    smooth.smooth(massive, tmp_path / "smooth.onnx", lambda: iter(feeds), 0.5)
    int8_static(tmp_path / "smooth.onnx", tmp_path / "sq.onnx", lambda: iter(feeds), per_channel=True,
                symmetric_activations=False)
    plain, smoothed = error(tmp_path / "plain.onnx"), error(tmp_path / "sq.onnx")
    assert smoothed < 0.5 * plain, (plain, smoothed)
    down = smooth.sites(model)[-1].activation  # down_proj's input: the massive channel shrinks
    before = smooth.channel_max(massive, lambda: iter(feeds), [down])[down]
    after = smooth.channel_max(tmp_path / "smooth.onnx", lambda: iter(feeds), [down])[down]
    assert before.argmax() == 3 and after.max() < before.max() / 10


def test_quantize_export_smooths_static_int8_by_default_and_records_it(shards_of, tmp_path):
    folder, shards = shards_of("llama-gqa")
    m = quantize_export(folder, tmp_path / "q", QuantConfig("int8-static", per_channel=True), shards, log=lambda s: None)
    assert m.quantization["config"]["smooth_alpha"] == 0.5
    assert all(m.quantization["graphs"][graph_name(i)].startswith("SmoothQuant alpha 0.5 on 3 projection inputs")
               for i in range(m.num_layers))
    assert not list((tmp_path / "q").glob("*.smooth.onnx"))
    off = quantize_export(folder, tmp_path / "off", QuantConfig("int8-static", per_channel=True, smooth_alpha=0),
                          shards, log=lambda s: None)
    assert off.quantization["graphs"]["layer_000"].startswith("int8 static QDQ")
    assert off.graphs.layers[0].sha256 != m.graphs.layers[0].sha256


@pytest.mark.parametrize("kwargs,message", [({"method": "int8-dynamic", "smooth_alpha": 0.5}, "applies to int8-static"),
                                            ({"method": "int8-static", "smooth_alpha": 1.0}, "must be in [0, 1)")])
def test_bad_smoothing_is_refused(kwargs, message):
    with pytest.raises(SkipDecodeError, match=re.escape(message)):
        QuantConfig(**kwargs)


def test_smoothing_is_on_for_static_int8_by_default():
    assert QuantConfig("int8-static").smooth_alpha == 0.5 and QuantConfig("int8-static", smooth_alpha=0).smooth_alpha == 0
    assert QuantConfig("int8-dynamic").smooth_alpha == 0 and QuantConfig("int4-weight").smooth_alpha == 0
