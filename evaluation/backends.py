"""Open an exported model (``skipdecode export`` folder, or a TensorRT engine folder) for evaluation.

The backends are runtime/'s (``skipdecode.runtime.api.open_backend``), imported only when asked,
so evaluating the PyTorch reference never needs ONNX Runtime or TensorRT, and the export path
never needs torch.
"""

from __future__ import annotations

import json
from pathlib import Path

from skipdecode.errors import SkipDecodeError
from skipdecode.schedule import Schedule
from skipdecode.tokenizer import Tokenizer

KINDS = ("onnxruntime", "tensorrt")


def _read(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise SkipDecodeError(f"{file}:{e.lineno}: invalid JSON ({e.msg})") from None
    return data if isinstance(data, dict) else {}


def export_schedule(export_dir: Path) -> tuple[Schedule | None, dict]:
    """The schedule the model was fine-tuned under (manifest, else skipdecode.json) and the rest
    of skipdecode.json (training facts such as steps)."""
    meta = _read(export_dir / "skipdecode.json") if (export_dir / "skipdecode.json").exists() else {}
    manifest = _read(export_dir / "manifest.json") if (export_dir / "manifest.json").exists() else {}
    raw = manifest.get("schedule") or meta.get("schedule")
    try:
        schedule = Schedule.from_dict(raw) if raw else None
    except (TypeError, ValueError) as e:
        raise SkipDecodeError(f"{export_dir}: invalid schedule ({e})") from None
    return schedule, {k: v for k, v in meta.items() if k != "schedule"}


def resolve_export(export_dir: str | Path, kind: str) -> Path:
    """The export folder for ``kind`` (runtime.api's resolution), refused if it is not an export."""
    from skipdecode.runtime.api import resolve_export as resolve

    path = resolve(export_dir, kind)
    if not (path / "manifest.json").is_file():
        raise SkipDecodeError(f"{export_dir}: not an export folder (no manifest.json; run `skipdecode export`)")
    return path


def open_export(export_dir: str | Path, kind: str, device: str = "cpu"):
    """-> (backend, tokenizer, trained schedule or None, training facts)."""
    if kind not in KINDS:
        raise SkipDecodeError(f"unknown backend {kind!r} for an export (give one of {', '.join(KINDS)})")
    path = resolve_export(export_dir, kind)
    try:
        from skipdecode.runtime.api import open_backend

        backend = open_backend(path, kind, device)
    except ModuleNotFoundError as e:
        extra = "runtime" if kind == "onnxruntime" else kind
        raise SkipDecodeError(f"--backend {kind} needs the {e.name} package (pip install 'skipdecode[{extra}]')") from None
    schedule, training = export_schedule(path)
    return backend, Tokenizer.from_dir(path), schedule, training
