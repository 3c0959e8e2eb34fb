"""Session fixtures: tiny checkpoints, their models and their exports (helpers: tests/tiny.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tiny import EXPORTS, GQA_CONFIGS, TINY, make_hf, save_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """HF checkpoint folders of every tiny family, saved once per test session."""
    root = tmp_path_factory.mktemp("ckpt")
    return {name: save_checkpoint(make_hf(cfg), root / name) for name, cfg in TINY.items()}


@pytest.fixture(scope="session")
def tiny_models(tiny_checkpoints):
    """name -> (transformers model, our LoadedModel) with the same weights."""
    import transformers
    from skipdecode.models import load_model

    out = {}
    for name, path in tiny_checkpoints.items():
        hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        out[name] = (hf, load_model(str(path)))
    return out


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
