"""Calibration shards hold exactly what skip decoding feeds each layer graph: checked against the
PyTorch reference's hidden states entering each layer and its KV cache, and by replaying the
recorded calls through the fp32 graphs."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from skipdecode.calibration.capture import CaptureConfig, ShardSet, calibration_prompts, capture
from skipdecode.errors import SkipDecodeError
from skipdecode.export.contract import graph_name, layer_file
from skipdecode.models.backend import TorchBackend
from skipdecode.runtime import GenerationConfig, generate_ids
from skipdecode.schedule import Schedule
from skipdecode.tokenizer import Tokenizer

NEW_TOKENS = 8


def _torch_layer_inputs(model, prompts, schedule, eos):
    """Generate with the PyTorch reference, recording each decoder layer's hidden input per call."""
    seen = {l: [] for l in range(model.num_layers)}
    hooks = [layer.register_forward_pre_hook(lambda mod, args, l=l: seen[l].append(args[0].clone()))
             for l, layer in enumerate(model.decoder_layers)]
    backend = TorchBackend(model)
    try:
        rows = generate_ids(backend, prompts, schedule, GenerationConfig(NEW_TOKENS), eos, 0, batch_size=len(prompts),
                            policy="static")  # calibration's own policy: rows held to the batch's end
    finally:
        for h in hooks:
            h.remove()
    return seen, backend, rows


@pytest.mark.parametrize("name, order", [("llama-gqa", None), ("opt-gqa", None), ("llama-trt", None),
                                         ("llama-gqa", "even"), ("opt-gqa", (2, 4, 1, 3, 5))])
def test_shards_hold_the_inputs_skip_decoding_produces(tiny_export, train_csv, tmp_path, name, order):
    """Also in other drop orders with a prompt depth: the layers outside the prompt's set run no call."""
    folder, loaded, _ = tiny_export(name)
    model, L = loaded.model, loaded.model.num_layers
    schedule = Schedule(L, max_layers=L - 1, min_layers=2, window=6)
    if order is not None:
        schedule = Schedule(L, max_layers=L - 2, min_layers=2, window=6, drop_order=order, prompt_layers=L - 2)
    prompts = calibration_prompts(train_csv, 4, seed=0)
    index = capture(folder, prompts, schedule, tmp_path / "calib", CaptureConfig(4, 0, 4, NEW_TOKENS),
                    show_progress=False)
    shards = ShardSet(tmp_path / "calib")
    assert index["samples"] == 4 and index["schedule"] == schedule.to_dict() and len(index["shards"]) == 1
    assert json.loads((tmp_path / "calib" / "index.json").read_text())["seed"] == 0

    tok = Tokenizer.from_dir(folder)
    ids = [tok.encode(p) for p in prompts]
    with torch.no_grad():
        seen, cache, rows = _torch_layer_inputs(model, ids, schedule, tok.eos_ids)
    steps = index["shards"][0]["steps"]
    assert steps == [list(schedule.layers_for_step(t)) for t in range(len(steps))]
    assert index["shards"][0]["prefill_layers"] == list(schedule.prompt_layer_set())
    n = np.array(sorted(len(i) for i in ids))  # generate_ids adds rows by prompt length
    for l in range(L):
        feeds = list(shards.feeds(graph_name(l), valid_only=False))
        prompt = l in schedule.prompt_layer_set()
        assert len(feeds) == len(seen[l]) == shards.calls(graph_name(l)) == prompt + sum(l in s for s in steps)
        if not prompt:  # a layer no token of this schedule runs
            continue
        pre, ref = feeds[0], seen[l][0].numpy()  # both right-padded: row b's position p at index p
        for b in range(len(ids)):
            np.testing.assert_allclose(pre["hidden"][b, :n[b]], ref[b, :n[b]], rtol=1e-4, atol=1e-4)
        for i, (feed, ref) in enumerate(zip(feeds[1:], seen[l][1:])):
            np.testing.assert_allclose(feed["hidden"], ref.numpy(), rtol=1e-4, atol=1e-4)
            # the past each row had at that call: the reference's KV at the same positions
            t = [s for s in range(len(steps)) if l in steps[s]][i]
            for b in range(len(ids)):
                valid = n[b] + t  # row b's prompt, then the t tokens decoded before
                np.testing.assert_allclose(feed["past_key"][b, :, :valid], cache.k[l][b, :, :valid].numpy(), atol=1e-4)
                np.testing.assert_allclose(feed["past_value"][b, :, :valid], cache.v[l][b, :, :valid].numpy(), atol=1e-4)
                assert not feed["past_key"][b, :, valid:].any()  # nothing past the row's keys


@pytest.mark.parametrize("name", ["llama-gqa", "llama-trt"])
def test_replaying_a_call_gives_the_next_layers_input(tiny_export, train_csv, tmp_path, name):
    """A layer's output on the rebuilt inputs is what the next layer of that step recorded."""
    folder, loaded, _ = tiny_export(name)
    L = loaded.model.num_layers
    schedule = Schedule(L, max_layers=L - 2, min_layers=2, window=5)
    capture(folder, calibration_prompts(train_csv, 3), schedule, tmp_path / "c", CaptureConfig(3, 0, 3, 6),
            show_progress=False)
    shards = ShardSet(tmp_path / "c")
    steps = shards.index["shards"][0]["steps"]
    feeds = {l: list(shards.feeds(graph_name(l), valid_only=False)) for l in range(L)}
    for t in (0, 3):
        run = steps[t]
        for a, b in zip(run, run[1:]):
            i = 1 + sum(a in s for s in steps[:t])  # call index of layer a at step t (after the prefill)
            j = 1 + sum(b in s for s in steps[:t])
            sess = ort.InferenceSession(str(folder / layer_file(a)))
            out = sess.run(["hidden_out"], feeds[a][i])[0]
            np.testing.assert_allclose(out, feeds[b][j]["hidden"], rtol=1e-5, atol=1e-5)


def test_valid_only_feeds_drop_padding_and_ended_rows(tiny_export, train_csv, tmp_path):
    """What calibration sees: each prompt row alone without padding, decode rows while they generate;
    replaying them gives the same outputs for the real tokens as the batched calls."""
    folder, loaded, _ = tiny_export("llama-gqa")
    capture(folder, calibration_prompts(train_csv, 4), Schedule.full(6), tmp_path / "c", CaptureConfig(4, 0, 4, 8),
            show_progress=False)
    shards = ShardSet(tmp_path / "c")
    shard = shards.index["shards"][0]
    n, live = shard["prompt_lengths"], shard["live_decode_calls"]
    assert n == sorted(n) and len(set(n)) > 1 and all(0 <= k <= 7 for k in live)
    raw, valid = list(shards.feeds("layer_002", valid_only=False)), list(shards.feeds("layer_002"))
    steps = shard["decode_steps"]
    assert len(valid) == 4 + sum(1 for t in range(steps) if max(live) > t)  # a call with no live row is dropped
    assert sum(f["hidden"].shape[0] for f in valid[4:]) == sum(min(k, steps) for k in live)
    sess = ort.InferenceSession(str(folder / "layer_002.onnx"))
    batched = sess.run(["hidden_out"], raw[0])[0]
    for b, feed in enumerate(valid[:4]):
        assert feed["hidden"].shape == (1, n[b], 64) and int(feed["total_sequence_length"]) == n[b]
        np.testing.assert_allclose(sess.run(["hidden_out"], feed)[0][0], batched[b, :n[b]], rtol=1e-5, atol=1e-5)
    t = max(live) - 1  # a late step: some rows may have ended
    rows = [b for b in range(4) if live[b] > t]
    one = next(f for f in valid[4:] if f["hidden"].shape[0] == len(rows) and
               np.array_equal(f["seqlens_k"], raw[1 + t]["seqlens_k"][rows]))
    np.testing.assert_allclose(sess.run(["hidden_out"], one)[0], sess.run(["hidden_out"], raw[1 + t])[0][rows],
                               rtol=1e-5, atol=1e-5)
    for only in (True, False):  # one phase at a time: the same calls, split where the prefill ends
        every = list(shards.feeds("layer_002", valid_only=only))
        split = [list(shards.feeds("layer_002", only, phase=phase)) for phase in ("prefill", "decode")]
        assert [len(p) for p in split] == [4 if only else 1, len(every) - (4 if only else 1)]
        for a, b in zip(every, split[0] + split[1]):
            np.testing.assert_array_equal(a["hidden"], b["hidden"])
    with pytest.raises(ValueError, match="phase"):
        next(shards.feeds("layer_002", phase="generate"))


def test_prompts_are_seeded_distinct_and_never_the_test_set(train_csv, tmp_path):
    a = calibration_prompts(train_csv, 6, seed=1)
    assert a == calibration_prompts(train_csv, 6, seed=1) != calibration_prompts(train_csv, 6, seed=2)
    assert len(set(a)) == 6 and all(p.endswith("\n") for p in a)  # the E2E template (skipdecode/data.py)
    assert len(calibration_prompts(train_csv, 100)) == 10
    test = tmp_path / "testset_w_refs.csv"
    test.write_text(train_csv.read_text())
    with pytest.raises(SkipDecodeError, match="test set"):
        calibration_prompts(test, 4)
    with pytest.raises(SkipDecodeError, match="samples"):
        calibration_prompts(train_csv, 0)


def test_shard_folder_errors(tmp_path):
    with pytest.raises(SkipDecodeError, match="not a calibration folder"):
        ShardSet(tmp_path)
    (tmp_path / "index.json").write_text("{")
    with pytest.raises(SkipDecodeError, match="index.json:1: invalid JSON"):
        ShardSet(tmp_path)
