"""Open an exported model (``skipdecode export`` folder, or a TensorRT engine folder) for evaluation.

The backends are runtime/'s (``skipdecode.runtime.api.open_backend``, which imports ONNX Runtime
or TensorRT only when asked), so evaluating the PyTorch reference never needs either, and the
export path never needs torch.
"""

from __future__ import annotations

from pathlib import Path

from skipdecode.errors import SkipDecodeError
from skipdecode.runtime.api import BACKENDS, open_backend, resolve_export as resolve
from skipdecode.runtime.manifest import MANIFEST
from skipdecode.schedule import read_schedule_file
from skipdecode.tokenizer import Tokenizer


def resolve_export(export_dir: str | Path, kind: str) -> Path:
    """The export folder for ``kind`` (runtime.api's resolution), refused if it is not an export."""
    path = resolve(export_dir, kind)
    if not (path / MANIFEST).is_file():
        raise SkipDecodeError(f"{export_dir}: not an export folder (no {MANIFEST}; run `skipdecode export`)")
    return path


def open_export(export_dir: str | Path, kind: str, device: str = "cpu"):
    """-> (backend, tokenizer, the schedule it was fine-tuned under or None, training facts
    from its skipdecode.json)."""
    if kind not in BACKENDS:
        raise SkipDecodeError(f"unknown backend {kind!r} for an export (give one of {', '.join(BACKENDS)})")
    path = resolve_export(export_dir, kind)
    try:
        backend = open_backend(path, kind, device)
    except ModuleNotFoundError as e:
        extra = "runtime" if kind == "onnxruntime" else kind
        raise SkipDecodeError(f"--backend {kind} needs the {e.name} package (pip install 'skipdecode[{extra}]')") from None
    return backend, Tokenizer.from_dir(path), backend.manifest.schedule, read_schedule_file(path)[1]
