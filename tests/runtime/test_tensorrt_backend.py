"""TensorRT engines built from a tiny tensorrt-target export and run against the PyTorch
reference. Needs TensorRT, cuda-python and a CUDA GPU: skipped elsewhere (CI has none)."""

import importlib.util

import pytest

from tiny import assert_greedy_matches_reference


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
    assert_greedy_matches_reference(TensorRTBackend(out), loaded.model)


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
