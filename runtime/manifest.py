"""manifest.json of a per-layer export: read, check against the files, hash (numpy-free, torch-free).

Written by `skipdecode export` (export/exporter.py), read by every runtime backend. A graph whose
SHA-256 differs from the manifest, or that is missing, is refused before any session is made.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from skipdecode.errors import SkipDecodeError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def graph_entries(manifest: dict) -> list[tuple[str, dict]]:
    """(role, entry) for every graph: ('embed', ...), ('layer 0', ...), ..., ('lm_head', ...).

    A layer entry may carry ``decode``: an entry of its own for a graph with the same contract
    that decode steps run instead (``skipdecode calibrate --split-phases``: activation scales
    calibrated on decode steps alone); backends that do not know it run the main graph."""
    g = manifest["graphs"]
    return [("embed", g["embed"])] + [(f"layer {i}", e) for i, e in enumerate(g["layers"])] + [("lm_head", g["lm_head"])]


def load_manifest(export_dir: str | Path, verify: bool = True) -> dict:
    """Read DIR/manifest.json; with ``verify``, check every graph file exists with its SHA-256."""
    root = Path(export_dir)
    file = root / MANIFEST
    if not root.is_dir():
        raise SkipDecodeError(f"{root}: no such export folder")
    if not file.is_file():
        hint = " (a --target both export has onnxruntime/ and tensorrt/ inside)" if (root / "onnxruntime").is_dir() else ""
        raise SkipDecodeError(f"{root}: not an export (no {MANIFEST}){hint}")
    try:
        m = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise SkipDecodeError(f"{file}:{e.lineno}: invalid JSON ({e.msg})") from None
    if m.get("format_version") != FORMAT_VERSION:
        raise SkipDecodeError(f"{file}: format_version {m.get('format_version')!r}, this runtime reads {FORMAT_VERSION}")
    try:
        entries = graph_entries(m)
    except (KeyError, TypeError):
        raise SkipDecodeError(f"{file}: no 'graphs' with embed, layers and lm_head") from None
    if len(m["graphs"]["layers"]) != m.get("num_layers"):
        raise SkipDecodeError(f"{file}: {len(m['graphs']['layers'])} layer graphs listed, num_layers is {m.get('num_layers')}")
    if verify:
        for role, e in entries + [(f"{r} (decode)", e["decode"]) for r, e in entries if e.get("decode")]:
            for name, digest in e["sha256"].items():
                path = root / name
                if not path.is_file():
                    raise SkipDecodeError(f"{path}: {role} graph file is missing (listed in {MANIFEST})")
                if sha256_file(path) != digest:
                    raise SkipDecodeError(f"{path}: {role} graph does not match its SHA-256 in {MANIFEST} "
                                          "(modified or corrupted; re-export)")
    return m
