"""TensorRT engines built from a tiny tensorrt-target export and run against the PyTorch
reference. Needs TensorRT, cuda-python and a CUDA GPU: skipped elsewhere (CI has none)."""

import importlib.util

import pytest

from skipdecode.models.backend import TorchBackend
from skipdecode.runtime import GenerationConfig, generate_ids
from skipdecode.schedule import Schedule


def _has_gpu() -> bool:
    if importlib.util.find_spec("tensorrt") is None or importlib.util.find_spec("cuda") is None:
        return False
    try:
        from skipdecode.runtime.cuda import check, cudart
        return check(cudart().cudaGetDeviceCount()) > 0
    except Exception:
        return False


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _has_gpu(), reason="needs TensorRT, cuda-python and a CUDA GPU")]


@pytest.fixture(scope="module")
def engines(tiny_export, tmp_path_factory):
    from skipdecode.runtime.tensorrt_engines import build_engines

    folder, loaded, _ = tiny_export("llama-trt")
    out = tmp_path_factory.mktemp("engines") / "llama"
    build_engines(folder, out, max_batch=4, max_prompt=32)
    return out, loaded


def test_greedy_matches_torch_under_skip_schedule(engines):
    from skipdecode.runtime.tensorrt_backend import TensorRTBackend

    out, loaded = engines
    prompts = [[5, 9, 14, 3, 22, 7], [31, 4], [8, 8, 40]]
    cfg = GenerationConfig(max_new_tokens=10, ignore_eos=True)
    for schedule in (Schedule.full(6), Schedule(6, 5, 2, window=6)):
        ref = generate_ids(TorchBackend(loaded.model), prompts, schedule, cfg, [2], 0, batch_size=3)
        trt = TensorRTBackend(out)
        got = generate_ids(trt, prompts, schedule, cfg, [2], 0, batch_size=3)
        assert [r.token_ids for r in got] == [r.token_ids for r in ref]
        assert [tuple(l for l, (a, b) in enumerate(c[1]) if a < b) for c in trt.calls[1:]] == [
            schedule.layers_for_step(t) for t in range(9)]


def test_engines_from_another_tensorrt_are_refused(engines, tmp_path):
    import json
    import shutil

    from skipdecode.errors import SkipDecodeError
    from skipdecode.runtime.tensorrt_backend import TensorRTBackend

    out, _ = engines
    copy = tmp_path / "e"
    shutil.copytree(out, copy)
    rec = json.loads((copy / "engines.json").read_text())
    (copy / "engines.json").write_text(json.dumps({**rec, "tensorrt_version": "0.0.1"}))
    with pytest.raises(SkipDecodeError, match="rebuild"):
        TensorRTBackend(copy)
