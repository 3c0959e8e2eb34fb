"""`skipdecode export`: a model to embed.onnx, layer_NNN.onnx, lm_head.onnx and manifest.json
(and adapter_NNN.onnx for a checkpoint with entry adapters).

The export is written to a temporary folder beside ``out``, validated there, and renamed into
place only when every check passed, so a failed or interrupted export never leaves a half-written
folder (and never replaces a good one).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from tqdm import tqdm

from skipdecode.errors import SkipDecodeError
from skipdecode.io import atomic_dir
from skipdecode.export import ort_graphs, torch_graphs
from skipdecode.export.contract import (ADAPTERS_ONNXRUNTIME_ONLY, EMBED, LM_HEAD, TARGETS, TOP_K, adapter_name,
                                        graph_file, layer_file)
from skipdecode.models.loading import EMBEDDED
from skipdecode.runtime.manifest import GraphEntry, Graphs, Manifest
from skipdecode.schedule import write_schedule_file

DTYPES = {"float32": (torch.float32, np.float32), "float16": (torch.float16, np.float16)}
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's 2 GiB limit, with margin
DEFAULT_MAX_SEQ = 2048
GQA_HEAD_MULTIPLE = 16  # ORT's CPU GroupQueryAttention needs head_size % 16 == 0


@dataclass(frozen=True)
class ExportConfig:
    target: str = "onnxruntime"
    """onnxruntime (contrib ops, KV shared in place), tensorrt (standard ops only) or both."""
    dtype: str = "float32"
    """float32 or float16 (weights, hidden states and KV; logits stay float32)."""
    max_batch: int = 32
    """Largest batch the runtime may use (TensorRT optimisation profiles; recorded in the manifest)."""
    max_seq: int | None = None
    """T_max, the KV buffer length (prompt + new tokens); default min(2048, the model's positions)."""
    opset: int = 18
    top_k: int = TOP_K
    overwrite: bool = False
    validate: bool = True
    save_outputs: str | None = None
    """A folder for every graph's validation inputs and ONNX Runtime outputs in polygraphy's JSON
    format (TensorRT checks against them later: export/README.md); ``target/`` inside for both."""
    save_layers: tuple[int, ...] | None = None
    """Layers whose inputs/outputs --save-outputs writes (default all; embed and lm_head always)."""

    def __post_init__(self):
        if self.target not in (*TARGETS, "both"):
            raise SkipDecodeError(f"unknown target {self.target!r} (onnxruntime, tensorrt or both)")
        if self.dtype not in DTYPES:
            raise SkipDecodeError(f"unsupported dtype {self.dtype!r} (float32 or float16)")
        if self.max_batch < 1:
            raise SkipDecodeError(f"--max-batch must be >= 1, got {self.max_batch}")
        if self.max_seq is not None and self.max_seq < 2:
            raise SkipDecodeError(f"--max-seq must be >= 2, got {self.max_seq}")
        if self.opset < 18:
            raise SkipDecodeError(f"--opset {self.opset}: the graphs need opset 18 or newer")
        if self.save_outputs is not None and not self.validate:
            raise SkipDecodeError("--save-outputs saves the validation's inputs and outputs: drop --no-validate")
        if self.save_layers is not None and self.save_outputs is None:
            raise SkipDecodeError("--save-layers needs --save-outputs DIR")

    @property
    def targets(self) -> tuple[str, ...]:
        return TARGETS if self.target == "both" else (self.target,)


def save_graph(model: onnx.ModelProto, folder: Path, name: str) -> GraphEntry:
    """Write one graph (external data past 1.8 GB) and describe it for the manifest."""
    path = folder / name
    big = model.ByteSize() > EXTERNAL_DATA_BYTES
    if big:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, path)
    return GraphEntry.of(model, folder, [name] + ([name + ".data"] if big else []))


def _standard_layers(model, max_seq: int, opset: int):
    """Export the TensorRT-style layer once with dynamo, then swap in each layer's weights.

    All layers share one structure, so tracing 30 times would only cost time (~3 s each here):
    the template is exported unoptimised (initializers keep their parameter names), each copy
    gets layer i's tensors by name and then goes through onnxscript's optimizer (constant folding).
    """
    import onnxscript.optimizer

    template = torch_graphs.export_standard_layer(model, 0, max_seq, opset, optimize=False)
    prefix = "layer."
    for i, layer in enumerate(model.decoder_layers):
        state = {prefix + k: v for k, v in layer.state_dict().items()}
        m = onnx.ModelProto()
        m.CopyFrom(template)
        for init in m.graph.initializer:
            if init.name in state:
                arr = state[init.name].detach().cpu().numpy()
                init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
            elif init.name.startswith(prefix):
                raise RuntimeError(f"template initializer {init.name} has no tensor in layer {i}")
        yield onnxscript.optimizer.optimize(m)


def _layer_kind(target: str, config) -> str:
    if target == "tensorrt":
        return "standard"
    return "gqa" if config.head_dim % GQA_HEAD_MULTIPLE == 0 else "standard"


def write_target(model, loaded, folder: Path, target: str, cfg: ExportConfig, max_seq: int,
                 shared: dict, log) -> Manifest:
    """Write one target's graphs and manifest into ``folder``; returns the manifest."""
    c = model.config
    kind = _layer_kind(target, c)
    if kind == "standard" and target == "onnxruntime":
        log(f"note: head_dim {c.head_dim} is not a multiple of {GQA_HEAD_MULTIPLE} (ORT's CPU GroupQueryAttention); "
            "the onnxruntime target uses the standard-op layers")
    np_dtype = DTYPES[cfg.dtype][1]
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    embed = save_graph(shared[EMBED], folder, graph_file(EMBED))
    lm_head = save_graph(shared[LM_HEAD], folder, graph_file(LM_HEAD))
    if kind == "gqa":
        cos_sin = ort_graphs.rope_tables(model, max_seq) if c.family == "llama" else None
        layer_iter = (ort_graphs.layer_graph(model, i, max_seq, np_dtype, cfg.opset, cos_sin)
                      for i in range(c.num_layers))
    else:
        layer_iter = _standard_layers(model, max_seq, cfg.opset)
    layers = []
    for i, g in enumerate(tqdm(layer_iter, total=c.num_layers, desc=f"export {target} layers", file=sys.stderr,
                               leave=False)):
        layers.append(save_graph(g, folder, layer_file(i)))
    adapters = model.entry_adapters
    adapter_entries = None if adapters is None else [
        save_graph(ort_graphs.adapter_graph(adapters[str(l)], c.hidden_size, np_dtype, cfg.opset), folder,
                   graph_file(adapter_name(l)))
        for l in adapters.layers]
    from skipdecode.models.loading import copy_tokenizer

    tokenizer_files = copy_tokenizer(loaded.path, folder)
    if loaded.schedule is not None:  # with the checkpoint's facts (training, a `skipdecode tune` record)
        write_schedule_file(folder, loaded.schedule, loaded.facts)
    import onnxruntime
    import onnxscript

    from skipdecode import __version__

    manifest = Manifest(
        target=target,
        layer_kind=kind,
        family=c.family,
        source=shared["source"],
        config=c.hf,
        num_layers=c.num_layers,
        hidden_size=c.hidden_size,
        num_kv_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        vocab_size=c.vocab_size,
        dtype=cfg.dtype,
        max_batch=cfg.max_batch,
        max_seq=max_seq,
        max_positions=c.max_position_embeddings,
        top_k=cfg.top_k,
        opset=cfg.opset,
        kv_layout={
            "shape": ["batch", c.num_kv_heads, "max_seq" if kind == "gqa" else max_seq, c.head_dim],
            "axes": "BNSH",
            "dtype": cfg.dtype,
            "storage": "right-padded: row b's token at position p sits at index p; valid keys [0, length_b)",
            "update": ("in place by GroupQueryAttention (bind the same buffer as past_* and present_*)"
                       if kind == "gqa" else "the runtime scatters new_key/new_value at write_index"),
        },
        position_offset=getattr(c, "position_offset", 0),
        schedule=loaded.schedule,
        tokenizer_files=tokenizer_files,
        exporter={
            "skipdecode": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__, "onnxruntime": onnxruntime.__version__,
            "embed_lm_head": "torch.onnx.export(dynamo=True)",
            "layers": ("onnx.helper from the weights (com.microsoft.GroupQueryAttention)" if kind == "gqa"
                       else "torch.onnx.export(dynamo=True) once, weights swapped per layer"),
            **({} if adapters is None else {"adapters": "onnx.helper from the weights (MatMul, Add)"}),
            "seconds": round(time.perf_counter() - t0 + shared["seconds"], 2),
        },
        graphs=Graphs(embed, lm_head, layers, adapter_entries),
        entry_adapter=None if adapters is None else adapters.spec(),
    )
    manifest.save(folder)
    return manifest


def check_exportable(model, targets, source) -> None:
    """Refuse what a target cannot carry instead of dropping it: entry adapters (models/adapters.py)
    have graphs that only the ONNX Runtime backend runs; a TensorRT export would be another model."""
    if model.entry_adapters is not None and "tensorrt" in targets:
        raise SkipDecodeError(f"{source}: {ADAPTERS_ONNXRUNTIME_ONLY} (export it with --target onnxruntime)")


def resolve_max_seq(cfg: ExportConfig, config) -> int:
    limit = config.max_position_embeddings
    if cfg.max_seq is None:
        return min(DEFAULT_MAX_SEQ, limit)
    if cfg.max_seq > limit:
        raise SkipDecodeError(f"--max-seq {cfg.max_seq} is above the model's {limit} positions")
    return cfg.max_seq


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise SkipDecodeError(f"{out}: already exists (pass --overwrite to replace it)")
    if out.exists() and not out.is_dir():
        raise SkipDecodeError(f"{out}: exists and is not a folder")


@contextlib.contextmanager
def outputs_dir(save: str | Path | None, overwrite: bool, inside: tuple[Path, Path] | None = None):
    """Where --save-outputs writes: an atomic folder of its own, or, when it lies inside the
    export folder being written (``inside`` = (out, its temporary folder)), the same place there."""
    if save is None:
        yield None
        return
    save = Path(save)
    if inside is not None and save.resolve().is_relative_to(inside[0].resolve()):
        if save.resolve() == inside[0].resolve():
            raise SkipDecodeError(f"--save-outputs {save}: give a folder other than --out (a subfolder works)")
        yield inside[1] / save.resolve().relative_to(inside[0].resolve())
        return
    _check_out(save, overwrite)
    with atomic_dir(save) as tmp:
        yield tmp


def export_model(spec: str, out: str | Path, cfg: ExportConfig = ExportConfig(), loaded=None,
                 log=lambda s: print(s, file=sys.stderr)) -> dict:
    """Export, validate, then move into ``out``. Returns {target: {"manifest", "report"}}."""
    out = Path(out)
    _check_out(out, cfg.overwrite)
    if cfg.save_outputs is not None and not Path(cfg.save_outputs).resolve().is_relative_to(out.resolve()):
        _check_out(Path(cfg.save_outputs), cfg.overwrite)  # fail before the minutes of exporting
    if loaded is None:
        from skipdecode.models import load_model

        loaded = load_model(spec, "cpu", torch.float32)
    reference = loaded.model
    check_exportable(reference, cfg.targets, spec)
    max_seq = resolve_max_seq(cfg, reference.config)
    L = reference.config.num_layers
    if cfg.save_layers and not all(0 <= i < L for i in cfg.save_layers):
        raise SkipDecodeError(f"--save-layers {','.join(map(str, cfg.save_layers))}: the model has layers 0..{L - 1}")
    if cfg.dtype == "float16":
        import copy

        model = copy.deepcopy(reference).half()
        if reference.config.family == "llama":
            model.inv_freq = reference.inv_freq.float()
    else:
        model = reference
    t0 = time.perf_counter()
    log("exporting embed and lm_head (dynamo) ...")
    shared = {EMBED: torch_graphs.export_embed(model, cfg.opset),
              LM_HEAD: torch_graphs.export_lm_head(model, min(cfg.top_k, model.config.vocab_size), cfg.opset)}
    shared["seconds"] = time.perf_counter() - t0
    shared["source"] = spec if spec in EMBEDDED else str(Path(loaded.path).resolve())
    results = {}
    with atomic_dir(out) as tmp, outputs_dir(cfg.save_outputs, cfg.overwrite, (out, tmp)) as save_tmp:
        for target in cfg.targets:
            folder = tmp if len(cfg.targets) == 1 else tmp / target
            manifest = write_target(model, loaded, folder, target, cfg, max_seq, shared, log)
            report = None
            if cfg.validate:
                from skipdecode.export.validate import verify_export

                save = None if save_tmp is None else save_tmp if len(cfg.targets) == 1 else save_tmp / target
                report = verify_export(folder, reference, log=log, save_outputs=save, save_layers=cfg.save_layers)
                if save is not None:
                    base = Path(cfg.save_outputs)
                    report["reference_outputs"]["folder"] = str(base if len(cfg.targets) == 1 else base / target)
                (folder / "validation.json").write_text(json.dumps(report, indent=2))
            results[target] = {"manifest": manifest, "report": report, "folder": str(out if folder == tmp else out / target)}
    return results
