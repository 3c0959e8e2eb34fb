"""Session fixtures: tiny checkpoints, their models and their exports (helpers: tests/tiny.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tiny import (ADAPTER_SCHEDULE, EXPORTS, GQA_CONFIGS, TINY, make_hf, save_checkpoint,  # noqa: E402
                  save_with_adapters, with_adapters)


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


@pytest.fixture(scope="session")
def adapter_export(tmp_path_factory, export_checkpoints):
    """adapter_export(name, rank) -> (export folder, LoadedModel): the checkpoint of EXPORTS[name]
    with random non-zero entry adapters of ``rank`` at ADAPTER_SCHEDULE's entry layers (2..5),
    saved as training saves one, then exported and validated on first use."""
    from skipdecode.export import ExportConfig, export_model
    from skipdecode.models import load_model

    root = tmp_path_factory.mktemp("adapter-exports")
    cache = {}

    def get(name: str, rank):
        if (name, rank) not in cache:
            ckpt_name, target = EXPORTS[name]
            base = load_model(str(export_checkpoints[ckpt_name]))
            model = with_adapters(base, rank, ADAPTER_SCHEDULE.entry_layers)
            ckpt = save_with_adapters(base, model, ADAPTER_SCHEDULE, root / f"{name}-{rank}-ckpt")
            loaded = load_model(str(ckpt))
            export_model(str(ckpt), root / f"{name}-{rank}", ExportConfig(target=target, max_seq=96),
                         loaded=loaded, log=lambda s: None)
            cache[name, rank] = (root / f"{name}-{rank}", loaded)
        return cache[name, rank]

    return get
