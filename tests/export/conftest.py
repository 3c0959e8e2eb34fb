"""Tiny exports shared by the export and ONNX Runtime backend tests, made once per session.

The tiny configs of tests/conftest.py have head_dim 8, below what ORT's CPU GroupQueryAttention
takes (a multiple of 16), so the GQA exports widen hidden_size to 64 (head_dim 16); the plain
configs exercise the standard-op fallback.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _root_conftest():
    """tests/conftest.py by path: both files are named conftest, so `import conftest` is ambiguous."""
    spec = importlib.util.spec_from_file_location("_skipdecode_root_conftest", Path(__file__).parents[1] / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_root = _root_conftest()
TINY, make_hf, save_checkpoint = _root.TINY, _root.make_hf, _root.save_checkpoint

GQA_CONFIGS = {
    "llama-gqa": dict(TINY["llama"], hidden_size=64),
    "opt-gqa": dict(TINY["opt"], hidden_size=64),
}
# name -> (checkpoint config, target)
EXPORTS = {
    "llama-gqa": ("llama-gqa", "onnxruntime"),
    "opt-gqa": ("opt-gqa", "onnxruntime"),
    "llama-trt": ("llama-gqa", "tensorrt"),
    "opt350-std": ("opt-350m-style", "onnxruntime"),  # head_dim 8: standard-op fallback
}


@pytest.fixture(scope="session")
def export_checkpoints(tmp_path_factory, tiny_checkpoints):
    root = tmp_path_factory.mktemp("export-ckpt")
    out = dict(tiny_checkpoints)
    for name, cfg in GQA_CONFIGS.items():
        out[name] = save_checkpoint(make_hf(cfg, seed=1), root / name)
    return out


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, export_checkpoints):
    """tiny_export(name) -> (export folder, LoadedModel); exported and validated on first use."""
    from skipdecode.export import ExportConfig, export_model
    from skipdecode.models import load_model

    root = tmp_path_factory.mktemp("exports")
    cache = {}

    def get(name: str):
        if name not in cache:
            ckpt, target = EXPORTS[name]
            loaded = load_model(str(export_checkpoints[ckpt]))
            results = export_model(str(export_checkpoints[ckpt]), root / name,
                                   ExportConfig(target=target, max_seq=96), loaded=loaded, log=lambda s: None)
            cache[name] = (root / name, loaded, results[target])
        return cache[name]

    return get
