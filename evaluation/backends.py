"""Open an exported model (``skipdecode export`` folder) on a runtime backend for evaluation.

The backends live in runtime/ and are imported only when asked, so evaluating the PyTorch
reference never needs ONNX Runtime or TensorRT, and the export path never needs torch.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from skipdecode.errors import SkipDecodeError
from skipdecode.schedule import Schedule
from skipdecode.tokenizer import Tokenizer

# --backend -> (module under runtime/, the backend class in it)
MODULES = {"onnxruntime": ("skipdecode.runtime.onnxruntime_backend", "OnnxRuntimeBackend"),
           "tensorrt": ("skipdecode.runtime.tensorrt_backend", "TensorRTBackend")}


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


def backend_class(kind: str):
    if kind not in MODULES:
        raise SkipDecodeError(f"unknown backend {kind!r} for an export (give one of {', '.join(MODULES)})")
    name, cls = MODULES[kind]
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            raise SkipDecodeError(f"--backend {kind}: {name} is not part of this installation") from None
        extra = "runtime" if kind == "onnxruntime" else kind
        raise SkipDecodeError(f"--backend {kind} needs the {e.name} package (pip install 'skipdecode[{extra}]')") from None
    if not hasattr(module, cls):
        raise SkipDecodeError(f"--backend {kind}: {name} has no {cls}")
    return getattr(module, cls)


def resolve_export(export_dir: str | Path, kind: str) -> Path:
    """An export folder; a ``--target both`` export holds one folder per target inside."""
    path = Path(export_dir)
    if not (path / "manifest.json").is_file() and (path / kind / "manifest.json").is_file():
        path = path / kind
    if not (path / "manifest.json").is_file():
        raise SkipDecodeError(f"{export_dir}: not an export folder (no manifest.json; run `skipdecode export`)")
    return path


def open_export(export_dir: str | Path, kind: str, device: str = "cpu"):
    """-> (backend, tokenizer, trained schedule or None, training facts)."""
    path = resolve_export(export_dir, kind)
    cls = backend_class(kind)
    if kind == "onnxruntime":
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else None
        backend = cls(path, providers=providers)
    else:
        backend = cls(path)
    schedule, training = export_schedule(path)
    return backend, Tokenizer.from_dir(path), schedule, training
