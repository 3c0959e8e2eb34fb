"""Reference inputs and outputs in polygraphy's JSON format (`skipdecode export ... --save-outputs DIR`).

The validation's inputs of every graph (export/validate.py) are run once more through polygraphy's
ONNX Runtime runner (CPU) and saved with polygraphy's own serialisation, so that a machine with
TensorRT can later check its engines against ONNX Runtime without torch, the checkpoint or this
package:

    polygraphy run EXPORT/layer_000.onnx --trt --load-inputs DIR/layer_000/inputs.json \\
        --load-outputs DIR/layer_000/outputs.json  (+ the shape profile, see DIR/compare.sh)

DIR/compare.sh holds that command for every graph, with an optimisation profile covering the
saved shapes; DIR/index.json names each graph's file and SHA-256, so the outputs are tied to the
exact graphs they came from. Graphs with ``com.microsoft`` ops (the onnxruntime target's GQA
layers) cannot go through TensorRT: their lines use ``--onnxrt`` (another ORT build or provider).
"""

from __future__ import annotations

import json
import shlex
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import polygraphy
from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
from polygraphy.comparator import Comparator
from polygraphy.logger import G_LOGGER

from skipdecode.errors import SkipDecodeError
from skipdecode.export.contract import EMBED, LM_HEAD, graph_name, layer_index
from skipdecode.runtime.manifest import Manifest

RUNNER = "onnxrt-cpu"
INDEX = "index.json"
SCRIPT = "compare.sh"
TOLERANCE = {"float32": 1e-3, "float16": 2e-2}
"""atol = rtol of the generated TensorRT comparison (an element fails only if both are exceeded).
A starting point, not calibrated on a GPU: fp32 TensorRT without TF32 should sit well inside it."""


def _shape_flags(feeds: list[dict]) -> list[str]:
    """--trt-min/opt/max-shapes covering every iteration (opt = max: the profile is for a check)."""
    names = list(feeds[0])
    lo = {n: np.min([f[n].shape for f in feeds], 0) for n in names}
    hi = {n: np.max([f[n].shape for f in feeds], 0) for n in names}
    fmt = lambda d: [f"{n}:[{','.join(str(int(x)) for x in d[n])}]" for n in names]  # noqa: E731
    return ["--trt-min-shapes", *fmt(lo), "--trt-opt-shapes", *fmt(hi), "--trt-max-shapes", *fmt(hi)]


class ReferenceSaver:
    """Called by the validation with each graph's feeds; runs them and writes DIR/<graph>/."""

    def __init__(self, export_dir: str | Path, out_dir: str | Path, manifest: Manifest, layers=None):
        """``layers``: indices of the layers to save (default all; embed and lm_head always). The
        tensorrt target's static KV buffers make ~25 MB of JSON per SmolLM2 layer at T_max 2048."""
        self.export_dir, self.out = Path(export_dir), Path(out_dir)
        self.manifest = manifest
        n = manifest.num_layers
        layers = range(n) if layers is None else sorted(set(layers))
        if bad := [i for i in layers if not 0 <= i < n]:
            raise SkipDecodeError(f"--save-layers {bad[0]}: the export has layers 0..{n - 1}")
        keep = {EMBED, LM_HEAD, *map(graph_name, layers)}
        self.files = {name: e for name, e in manifest.named_graphs() if name in keep}
        self.index: dict[str, dict] = {}
        self.out.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, feeds: list[dict]) -> None:
        if name not in self.files:
            return
        entry = self.files[name]
        folder = self.out / name
        folder.mkdir(parents=True, exist_ok=True)
        loader = [OrderedDict((k, np.ascontiguousarray(v)) for k, v in f.items()) for f in feeds]
        runner = OnnxrtRunner(SessionFromOnnx(str(self.export_dir / entry.file), providers=["cpu"]), name=RUNNER)
        with G_LOGGER.verbosity(G_LOGGER.ERROR):
            Comparator.run([runner], data_loader=loader, save_inputs_path=str(folder / "inputs.json"),
                           save_outputs_path=str(folder / "outputs.json"))
        self.index[name] = {
            "file": entry.file, "sha256": entry.sha256, "iterations": len(loader),
            "inputs": f"{name}/inputs.json", "outputs": f"{name}/outputs.json",
            "bytes": sum((folder / f).stat().st_size for f in ("inputs.json", "outputs.json")),
            "standard_ops_only": self.manifest.layer_kind == "standard" or layer_index(name) is None,
            "trt_shapes": _shape_flags(loader),
        }

    def command(self, name: str, export_dir: str = "$EXPORT", out_dir: str = "$OUTPUTS") -> list[str]:
        """The polygraphy command comparing graph ``name`` against the saved ORT outputs."""
        e = self.index[name]
        tol = str(TOLERANCE[self.manifest.dtype])
        backend = ["--trt", *e["trt_shapes"]] if e["standard_ops_only"] else ["--onnxrt"]
        if e["standard_ops_only"] and self.manifest.dtype == "float16":
            backend.insert(1, "--fp16")
        return ["polygraphy", "run", f"{export_dir}/{e['file']}", *backend, "--load-inputs", f"{out_dir}/{e['inputs']}",
                "--load-outputs", f"{out_dir}/{e['outputs']}", "--atol", tol, "--rtol", tol]

    def finish(self) -> dict:
        """Write index.json and compare.sh; returns the index."""
        m = self.manifest
        index = {"source": m.source, "target": m.target, "layer_kind": m.layer_kind, "dtype": m.dtype, "runner": RUNNER,
                 "onnxruntime": ort.__version__, "polygraphy": polygraphy.__version__, "graphs": self.index}
        (self.out / INDEX).write_text(json.dumps(index, indent=2))
        quote = lambda c: " ".join(f'"{a}"' if a.startswith("$") else shlex.quote(a) for a in c)  # noqa: E731
        lines = ["#!/usr/bin/env bash",
                 "# Compare each graph against ONNX Runtime CPU's saved outputs (written by skipdecode export",
                 "# --save-outputs). Usage: bash compare.sh EXPORT_DIR  (on a machine with TensorRT + polygraphy)",
                 "set -uo pipefail", 'EXPORT="${1:?usage: compare.sh EXPORT_DIR}"',
                 'OUTPUTS="$(cd "$(dirname "$0")" && pwd)"', "failed=()"]
        lines += [f"{quote(self.command(n))} || failed+=({n})" for n in self.index]
        lines += ['if ((${#failed[@]})); then echo "FAILED: ${failed[*]}" >&2; exit 1; fi',
                  f'echo "all {len(self.index)} graphs match"']
        (self.out / SCRIPT).write_text("\n".join(lines) + "\n")
        return index


def load_reference(out_dir: str | Path, name: str):
    """(list of feed dicts, polygraphy RunResults) saved for graph ``name``."""
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    folder = Path(out_dir) / name
    return load_json(str(folder / "inputs.json")), RunResults.load(str(folder / "outputs.json"))
