"""Entry adapters through export and the ONNX Runtime backend: adapter_NNN.onnx graphs in the
manifest, applied to exactly the rows the PyTorch reference maps (tiny checkpoints with random
non-zero adapters, conftest.py adapter_export), and refused where they cannot run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tiny import ADAPTER_SCHEDULE, EXPORTS, run_arrivals, save_with_adapters, solo_tokens, with_adapters

from skipdecode.errors import SkipDecodeError
from skipdecode.models.backend import TorchBackend
from skipdecode.runtime import GenerationConfig, generate_ids
from skipdecode.runtime.manifest import load_manifest
from skipdecode.schedule import Schedule, entries

PROMPTS = [[5, 9, 17, 3, 44, 8, 21], [7, 7, 30], [12, 50, 61, 6, 90, 33, 14, 15, 16, 71, 40], [88]]
SCHEDULES = [
    ADAPTER_SCHEDULE,
    Schedule(6, 4, 2, window=10, drop_order=(3, 1, 4, 2, 5), prompt_layers=5),  # enters 2, 4, 5; prompt enters 4
    Schedule.constant(6, 3, drop_order="even", prompt_layers=3),  # every step and the prompt enter
    [ADAPTER_SCHEDULE, Schedule(6, 3, 2, window=4), Schedule.full(6), Schedule.constant(6, 2)],  # one per row
]
EXPORTED = [("llama-gqa", 3), ("llama-gqa", "full"), ("opt-gqa", 3), ("opt-gqa", "full"), ("opt350-std", 2)]


@pytest.mark.parametrize("name,rank", EXPORTED)
def test_export_lists_the_adapter_graphs_and_validates(adapter_export, name, rank):
    folder, loaded = adapter_export(name, rank)
    m = load_manifest(folder)  # hashes verified
    assert m.entry_adapter == {"rank": rank, "layers": [2, 3, 4, 5]}
    assert [e.file for e in m.graphs.adapters] == [f"adapter_00{l}.onnx" for l in (2, 3, 4, 5)]
    assert [n for n, _ in m.named_graphs()][-5:] == ["adapter_002", "adapter_003", "adapter_004", "adapter_005",
                                                     "lm_head"]
    e = m.graphs.adapters[0]
    assert ([(s.name, s.shape) for s in e.inputs], [(s.name, s.shape) for s in e.outputs]) == (
        [("hidden", ["batch", "seq", m.hidden_size])], [("hidden_out", ["batch", "seq", m.hidden_size])])
    report = json.loads((folder / "validation.json").read_text())
    assert report["graphs"]["adapter_005"]["max_rel"] < 1e-5
    assert report["end_to_end"]["max_rel"] < 1e-4


@pytest.mark.parametrize("name,rank", EXPORTED)
def test_greedy_matches_torch_under_skip_schedules(adapter_export, name, rank):
    """Batched rows of different lengths under the paper's order, another drop order with a reduced
    prompt depth, a constant schedule whose prompt enters layers, and one schedule per row."""
    from skipdecode.runtime.onnxruntime_backend import OnnxRuntimeBackend

    folder, loaded = adapter_export(name, rank)
    ort_b = OnnxRuntimeBackend(folder)
    config = GenerationConfig(max_new_tokens=12, ignore_eos=True)
    for schedule in SCHEDULES:
        ref = generate_ids(TorchBackend(loaded.model), PROMPTS, schedule, config, [2], 0, batch_size=4)
        got = generate_ids(ort_b, PROMPTS, schedule, config, [2], 0, batch_size=4)
        assert [r.token_ids for r in got] == [r.token_ids for r in ref], schedule
    assert entries(SCHEDULES[1].prompt_layer_set()) == (4,) and entries(SCHEDULES[2].prompt_layer_set())


def batch_against_alone(folder, model, seed: int) -> list[bool]:
    """Random arrivals, prompt lengths, max tokens and per-request schedules (one keep order, mixed
    speedups and prompt depths) on one 3-row batch of the ORT backend: whether each request's
    greedy ids equal the PyTorch reference's for it alone."""
    from skipdecode.runtime.engine import Engine, EngineConfig
    from skipdecode.runtime.onnxruntime_backend import OnnxRuntimeBackend
    from skipdecode.runtime.request import Request

    rng = np.random.default_rng(seed)
    family = [Schedule.full(6), Schedule(6, 5, 2, window=6), Schedule.constant(6, 3), Schedule(6, 4, 1, window=4),
              Schedule(6, 4, 2, window=4, prompt_layers=4)]
    reqs = [(int(rng.integers(0, 12)), Request(rng.integers(3, 90, int(rng.integers(1, 12))).tolist(),
                                               int(rng.integers(1, 14)), family[int(rng.integers(0, len(family)))],
                                               ignore_eos=bool(rng.integers(0, 2))))
            for _ in range(int(rng.integers(4, 8)))]
    engine = Engine(OnnxRuntimeBackend(folder), [2], 0, EngineConfig(max_rows=3, max_len=40))
    run_arrivals(engine, reqs)
    ref = TorchBackend(model)
    return [engine.pop_result(r.request_id).token_ids == solo_tokens(ref, r, 40) for _, r in reqs]


@pytest.mark.parametrize("name,rank", [("llama-gqa", 3), ("opt-gqa", "full")])
@pytest.mark.parametrize("seed", range(4))
def test_continuous_batching_equals_alone(adapter_export, name, rank, seed):
    folder, loaded = adapter_export(name, rank)
    assert all(batch_against_alone(folder, loaded.model, seed))


def test_mapping_every_row_of_a_layer_breaks_the_equality(adapter_export, monkeypatch):
    """Guard against a vacuous parity: an adapter applied to all the rows that run a layer some row
    enters (not only to those that skipped the layer below) changes some request's tokens."""
    from skipdecode.runtime import onnxruntime_backend
    from skipdecode.runtime.backend import entering_rows

    folder, loaded = adapter_export("llama-gqa", 3)
    monkeypatch.setattr(onnxruntime_backend, "entering_rows",
                        lambda rows, below: [rows] if entering_rows(rows, below) else [])
    assert not all(ok for seed in range(4) for ok in batch_against_alone(folder, loaded.model, seed))


def test_a_layer_entered_without_an_adapter_is_refused_as_the_reference_does(adapter_export):
    from skipdecode.runtime.onnxruntime_backend import OnnxRuntimeBackend

    folder, loaded = adapter_export("llama-gqa", 3)
    no_warmup = Schedule(6, 5, 2, window=4, warmup_layers=0)  # enters layer 1; the adapters cover 2..5
    config = GenerationConfig(max_new_tokens=6, ignore_eos=True)
    errors = []
    for backend in (TorchBackend(loaded.model), OnnxRuntimeBackend(folder)):
        with pytest.raises(SkipDecodeError, match=r"^layer 1 is entered .* cover layers \[2, 3, 4, 5\]") as e:
            generate_ids(backend, PROMPTS, no_warmup, config, [2], 0, batch_size=4)
        errors.append(str(e.value))
    assert errors[0] == errors[1]


def test_a_tampered_adapter_graph_is_refused(adapter_export, tmp_path):
    from skipdecode.runtime.onnxruntime_backend import OnnxRuntimeBackend

    folder, _ = adapter_export("opt-gqa", 3)
    copy = tmp_path / "x"
    shutil.copytree(folder, copy)
    with open(copy / "adapter_003.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(SkipDecodeError, match=r"adapter_003\.onnx: adapter_003 graph does not match its SHA-256"):
        OnnxRuntimeBackend(copy)


def test_tensorrt_export_and_a_mismatched_reference_are_refused_in_one_line(adapter_export, export_checkpoints,
                                                                           tmp_path, capsys):
    from skipdecode.cli.main import main
    from skipdecode.export import verify_export
    from skipdecode.models import load_model

    base = load_model(str(export_checkpoints[EXPORTS["llama-trt"][0]]))
    ckpt = save_with_adapters(base, with_adapters(base, 3, (2, 3, 4, 5)), ADAPTER_SCHEDULE, tmp_path / "ckpt")
    for target in ("tensorrt", "both"):
        assert main(["export", "--model", str(ckpt), "--out", str(tmp_path / "exp"), "--target", target]) == 2
        assert capsys.readouterr().err == (f"skipdecode export: error: {ckpt}: entry adapters run on ONNX Runtime "
                                           "only for now (export it with --target onnxruntime)\n")
        assert not (tmp_path / "exp").exists()
    folder, _ = adapter_export("llama-gqa", 3)
    with pytest.raises(SkipDecodeError, match=r"the export's entry adapters \(\{'rank': 3, 'layers': \[2, 3, 4, 5\]\}\) "
                                              r"are not the reference model's \(None\)$"):
        verify_export(folder, base.model, log=lambda s: None)
