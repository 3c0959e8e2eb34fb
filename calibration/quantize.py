"""`skipdecode calibrate`: an fp32 export in, a complete quantized export out.

The output folder is an export like any other (graphs with the same names and I/O, manifest with
new SHA-256s, tokenizer files), so `skipdecode run`, `bench --export` and `eval --export` take it
unchanged. The manifest's ``quantization`` entry records the method, the calibration data
(samples, seed, schedule, the shards' export hash) and what was done to each graph, and why.

Precision choices, per graph:

- layers: the method (``calibration/graphs.py``: projections only; attention and KV stay float).
- lm_head: fp32 by default. It is the one place a rounding error changes the emitted token
  directly, and SkipDecode feeds it hidden states from varying depths; ``head="quantized"``
  applies the method to it too (at batch 1 it is the largest single weight read per token:
  hidden x vocab, as large as all SmolLM2 layers together).
- embed: fp32 by default. A Gather reads B rows per step, so quantizing it saves file size, not
  time; ``embed="quantized"`` stores the table in int8/int4 anyway (weight-only).

TensorRT target: explicit Q/DQ graphs from ONNX Runtime's ``quantize_static`` (QDQ, symmetric
int8, standard ops only) on the standard-op layers. NVIDIA ModelOpt's ONNX PTQ would be the
other route, but its ``[onnx]`` extra pins onnx~=1.21 and brings onnxruntime-gpu, which would
replace this environment's onnx 1.23 / onnxruntime 1.32 CPU.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from skipdecode.errors import SkipDecodeError
from skipdecode.export.contract import EMBED, LM_HEAD, TARGETS, adapter_index, adapter_name, graph_name, layer_index
from skipdecode.io import atomic_dir
from skipdecode.runtime.manifest import MANIFEST, GraphEntry, Graphs, Manifest, load_manifest, sha256_file
from skipdecode.schedule import SCHEDULE_FILE, Schedule

METHODS = ("int8-dynamic", "int8-static", "int4-weight")
PRECISIONS = ("fp32", "quantized")
CALIBRATION_METHODS = ("minmax", "percentile")
REDUCE_RANGE = ("auto", "on", "off")
"""--reduce-range: 7-bit int8 weights where this CPU needs them (auto), always, or never."""

FP32_HEAD = ("kept fp32: the head's rounding errors change the emitted token directly "
             "(--head quantized to quantize it)")
FP32_EMBED = "kept fp32: a Gather reads B rows per step, quantizing it saves file size only (--embed quantized)"
FP32_ADAPTER = "kept fp32: an entry adapter (one or two small MatMuls on the entering rows), carried unchanged"


@dataclass(frozen=True)
class QuantConfig:
    method: str
    """int8-dynamic, int8-static (QDQ, calibrated on the shards) or int4-weight (MatMulNBits)."""
    target: str | None = None
    """onnxruntime or tensorrt; default the export's own. tensorrt takes int8-static only."""
    per_channel: bool = False
    """int8 weights with one scale per output channel (int4 is always per block)."""
    head: str = "fp32"
    """LM head precision: fp32 or quantized (the method applied to it too)."""
    embed: str = "fp32"
    """Embedding table precision: fp32 or quantized (weight-only; saves file size, not time)."""
    block_size: int = 32
    """int4-weight: inputs per scale."""
    accuracy_level: int = 4
    """int4-weight: MatMulNBits compute type (4: int8 activations, the fast CPU kernels; 0: fp32)."""
    outlier_ratio: float = 2.0
    """int8-static: a MatMul whose static input scale costs more than this many times the per-call
    rounding error (calibration/outliers.py) is quantized per call (onnxruntime) or kept float
    (tensorrt) instead; inf keeps every MatMul static."""
    calibration_method: str = "minmax"
    """int8-static: how recorded activations become a scale: minmax (the range of every call) or
    percentile (99.99th percentile of the pooled values, clipping the rare massive activations;
    calibration/outliers.py)."""
    smooth_alpha: float | None = None
    """int8-static: SmoothQuant before calibration (calibration/smooth.py): each projection input's
    per-channel range moves into the weights with this strength; 0: off. Unset (None): 0.5 (the paper's)
    for int8-static, off otherwise."""

    reduce_range: str = "auto"
    """int8: 7-bit MatMul weights (ONNX Runtime's ``reduce_range``), so that its int8 kernels on an x86
    CPU without VNNI (AVX2 alone: 16-bit sums of uint8 x int8 pairs) cannot saturate; full 8-bit
    weights there lose most of the layer's accuracy. on, off, or auto: on where this machine's CPU
    is such a one (``skipdecode.cpu.int8_saturates``; the quantized graphs are checked on it),
    off elsewhere. Calibrate on the CPU family you deploy to, or say on for AVX2-only devices."""

    split_phases: bool = False
    """int8-static: each layer's graph calibrated on prefill calls only, plus a decode graph
    (``layer_NNN.decode.onnx``, the manifest entry's ``decode``) calibrated on the decode steps
    alone, for every layer the schedule runs while decoding. One static range no longer has to
    span the full-depth prompt and the skipped steps; the export grows by those layers' weights."""

    def __post_init__(self):
        if self.method not in METHODS:
            raise SkipDecodeError(f"unknown method {self.method!r} (choose from {', '.join(METHODS)})")
        if self.target is not None and self.target not in TARGETS:
            raise SkipDecodeError(f"unknown target {self.target!r} (choose from {', '.join(TARGETS)})")
        for name in ("head", "embed"):
            if getattr(self, name) not in PRECISIONS:
                raise SkipDecodeError(f"--{name} must be fp32 or quantized, got {getattr(self, name)!r}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise SkipDecodeError(f"block size must be a power of two >= 16, got {self.block_size}")
        if not self.outlier_ratio >= 1:
            raise SkipDecodeError(f"outlier ratio must be >= 1 (inf: never fall back), got {self.outlier_ratio}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise SkipDecodeError(f"unknown calibration method {self.calibration_method!r} "
                                  f"(choose from {', '.join(CALIBRATION_METHODS)})")
        if self.smooth_alpha is None:
            object.__setattr__(self, "smooth_alpha", 0.5 if self.method == "int8-static" else 0.0)
        if not 0 <= self.smooth_alpha < 1:
            raise SkipDecodeError(f"--smooth must be in [0, 1) (0: off), got {self.smooth_alpha}")
        if self.smooth_alpha and self.method != "int8-static":
            raise SkipDecodeError(f"--smooth applies to int8-static (static activation scales), not {self.method}")
        if self.split_phases and self.method != "int8-static":
            raise SkipDecodeError(f"--split-phases applies to int8-static (calibrated scales), not {self.method}")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise SkipDecodeError(f"accuracy level must be 0-4, got {self.accuracy_level}")
        if self.reduce_range not in REDUCE_RANGE:
            raise SkipDecodeError(f"--reduce-range must be one of {', '.join(REDUCE_RANGE)}, got {self.reduce_range!r}")

    @property
    def reduced_weights(self) -> bool:
        """Whether int8 MatMul weights are 7-bit (``reduce_range`` resolved on this machine)."""
        from skipdecode.cpu import int8_saturates

        return self.reduce_range == "on" or (self.reduce_range == "auto" and int8_saturates())

    @property
    def needs_data(self) -> bool:
        return self.method == "int8-static"


def same_schedule(a: Schedule, b: Schedule) -> bool:
    """Equal as decoding sees them: the same layers for the prompt and at every step."""
    if a.num_layers != b.num_layers or a.prompt_layer_set() != b.prompt_layer_set():
        return False
    steps = max(a.window, b.window) + 1
    return all(a.layers_for_step(t) == b.layers_for_step(t) for t in range(steps))


def schedule_warning(manifest: Manifest, shards) -> str | None:
    """A line to warn with when the shards were drawn under another schedule than the export's."""
    own = manifest.deployed_schedule()
    if shards is None or same_schedule(shards.schedule, own):
        return None
    return (f"calibration data drawn under {shards.schedule.describe()}, but the export deploys "
            f"{own.describe()}: activation ranges will not match what the layers see at run time")


def check_inputs(manifest: Manifest, config: QuantConfig, source: Path, has_data: bool) -> str:
    """One-line errors before any work (and before calibration data is captured); returns the target."""
    target = config.target or manifest.target
    if manifest.quantization:
        raise SkipDecodeError(f"{source}: already quantized ({manifest.quantization['method']}); "
                              "calibrate the fp32 export")
    if manifest.dtype != "float32":
        raise SkipDecodeError(f"{source}: a {manifest.dtype} export; quantization starts from a float32 export")
    if target != manifest.target:
        raise SkipDecodeError(f"--target {target}: {source} is a {manifest.target} export "
                              f"(run `skipdecode export --target {target}` first)")
    if target == "tensorrt" and config.method != "int8-static":
        raise SkipDecodeError(f"--target tensorrt takes int8-static (explicit Q/DQ graphs), not {config.method}")
    if target == "tensorrt" and config.split_phases:
        raise SkipDecodeError("--split-phases: the TensorRT runtime builds one engine per layer; "
                              "decode graphs are for the onnxruntime target")
    if config.needs_data and not has_data:
        raise SkipDecodeError(f"{config.method} needs calibration data: --data (a training file of task prompts "
                              "or a calibration folder)")
    return target


def check_shards(shards, source: Path) -> None:
    """Shards must come from this very export: activations belong to its weights."""
    from skipdecode.calibration.capture import export_hash

    if shards.index["export"]["manifest_sha256"] != export_hash(source):
        raise SkipDecodeError(f"{shards.folder}: captured from another export ({shards.index['export']['path']}); "
                              f"capture from {source}")


def _quantize_graph(src: Path, dst: Path, graph: str, config: QuantConfig, target: str, shards,
                    phase: str | None = None) -> str:
    """Write graph ``graph``, quantized, to ``dst`` (calibrated on ``phase``'s calls, default all);
    returns what was done, for the manifest."""
    from skipdecode.calibration import graphs

    m = config.method
    if graph == EMBED:  # weight-only whatever the method: there is no activation to quantize
        if m == "int4-weight":
            graphs.int4_gather(src, dst, config.block_size)
            return f"int4 weight-only table (GatherBlockQuantized, block {config.block_size})"
        graphs.int8_gather(src, dst)
        return "int8 weight-only table (per-tensor scale)"
    if m == "int8-dynamic":
        graphs.int8_dynamic(src, dst, config.per_channel, config.reduced_weights)
        return f"int8 dynamic: MatMul weights int8 {'per channel' if config.per_channel else 'per tensor'}, " \
               "activations quantized per call (uint8)"
    if m == "int8-static":
        from skipdecode.calibration.outliers import fallbacks

        sym, feeds = target == "tensorrt", (lambda: shards.feeds(graph, phase=phase))
        if not shards.calls(graph, phase):  # outside the calibration schedule's prompt layers: it never ran
            never = f"no calls recorded (the layer never runs under {shards.schedule.describe()})"
            if sym:
                shutil.copy2(src, dst)
                return f"kept fp32: {never}"
            graphs.int8_dynamic(src, dst, config.per_channel, config.reduced_weights)
            return f"int8 dynamic: {never}, MatMul weights int8 {'per channel' if config.per_channel else 'per tensor'}"
        smoothed = ""
        if config.smooth_alpha:
            src, smoothed = _smooth(src, dst.with_name(dst.stem + ".smooth.onnx"), feeds, config.smooth_alpha)
        excluded, ranges = {}, None
        if config.outlier_ratio != float("inf") or config.calibration_method != "minmax":
            excluded, ranges = fallbacks(src, feeds, sym, config.outlier_ratio, config.calibration_method)
        graphs.int8_static(src, dst, feeds, config.per_channel, sym, excluded, dynamic_fallback=not sym,
                           reduce_range=config.reduced_weights,
                           ranges=ranges if config.calibration_method != "minmax" else None)
        if config.smooth_alpha:
            src.unlink()
        done = (f"{smoothed}int8 static QDQ: MatMul weights int8 {'per channel' if config.per_channel else 'per tensor'}, "
                f"activations {'int8 symmetric' if sym else 'uint8'} from {shards.calls(graph, phase)} recorded "
                f"{phase + ' ' if phase else ''}calls ({config.calibration_method})")
        if excluded:
            instead = "kept fp32" if sym else "int8 dynamic"
            done += (f"; {instead} where one static scale costs > {config.outlier_ratio:g}x the per-call rounding "
                     f"error: {'; '.join(excluded.values())}")
        return done
    graphs.int4_weight(src, dst, config.block_size, config.accuracy_level)
    return f"int4 weight-only MatMulNBits, symmetric, block {config.block_size}, accuracy level {config.accuracy_level}"


def _quantized_entry(src: Path, folder: Path, name: str, graph: str, config: QuantConfig, target: str,
                     shards, phase: str | None) -> GraphEntry:
    """Quantize ``src`` into ``folder / name``, check its contract; its manifest entry."""
    import onnx

    from skipdecode.calibration.graphs import check_contract, op_counts, quantized_ops

    done = _quantize_graph(src, folder / name, graph, config, target, shards, phase)
    model = onnx.load(folder / name)
    counts = check_contract(onnx.load(src), model, graph)
    return GraphEntry.of(model, folder, [name], op_types=op_counts(model),
                         precision=f"{done} [{', '.join(quantized_ops(counts))}]")


def _smooth(src: Path, tmp: Path, feeds, alpha: float) -> tuple[Path, str]:
    """SmoothQuant ``src`` into ``tmp`` (exact in real arithmetic; the shards are the graph's
    inputs, so they still apply); returns the graph to quantize and what was done."""
    from skipdecode.calibration.smooth import smooth

    ratios = smooth(src, tmp, feeds, alpha)
    widest = max(ratios.items(), key=lambda kv: kv[1][0], default=None)
    note = f"SmoothQuant alpha {alpha:g} on {len(ratios)} projection inputs"
    if widest:
        note += f" (widest {widest[0]}: max |x| {widest[1][0]:.1f} -> {widest[1][1]:.1f})"
    return tmp, note + "; "


def _kept_fp32(graph: str, config: QuantConfig) -> str | None:
    """Why graph ``graph`` is copied unchanged, or None when it is quantized."""
    if adapter_index(graph) is not None:
        return FP32_ADAPTER
    if graph == LM_HEAD and config.head == "fp32":
        return FP32_HEAD
    if graph == EMBED and config.embed == "fp32":
        return FP32_EMBED
    return None


def quantize_export(export_dir: str | Path, out: str | Path, config: QuantConfig, shards=None,
                    overwrite: bool = False, check_prompts: list[list[int]] | None = None,
                    check_tokens: int = 16, threads: int | None = None, log=None, data: str | None = None) -> Manifest:
    """Quantize every graph of ``export_dir`` into ``out`` (atomically); returns the new manifest.

    ``check_prompts``: token-id prompts for the agreement check against the fp32 export
    (teacher-forced greedy under the export's own schedule), recorded in the manifest.
    """
    from tqdm import tqdm

    log = log or (lambda s: print(s, file=sys.stderr))
    source, out = Path(export_dir), Path(out)
    src_m = load_manifest(source)
    target = check_inputs(src_m, config, source, shards is not None)
    if shards is not None:
        check_shards(shards, source)
    if out.exists() and not overwrite:
        raise SkipDecodeError(f"{out}: already exists (pass --overwrite to replace it)")
    if out.resolve() == source.resolve():
        raise SkipDecodeError(f"{out}: is the source export; write the quantized one elsewhere")
    warning = schedule_warning(src_m, shards)
    if warning:
        log(f"warning: {warning}")
    t0 = time.perf_counter()
    choices, entries = {}, {}
    with atomic_dir(out) as tmp:
        graphs = src_m.named_graphs()
        for graph, entry in tqdm(graphs, desc=f"quantize {config.method}", unit="graph", file=sys.stderr, leave=False):
            name = entry.file
            keep = _kept_fp32(graph, config)
            if keep is not None:
                for f in entry.sha256:
                    shutil.copy2(source / f, tmp / f)
                new = replace(entry, precision=keep)
            else:
                if len(entry.sha256) > 1:
                    raise SkipDecodeError(f"{source / name}: graphs with external data are not supported here")
                split = config.split_phases and layer_index(graph) is not None
                quantize = lambda out_name, phase: _quantized_entry(  # noqa: E731
                    source / name, tmp, out_name, graph, config, target, shards, phase)
                new = quantize(name, "prefill" if split else None)
                if split and shards.calls(graph, "decode"):
                    decode = quantize(name.removesuffix(".onnx") + ".decode.onnx", "decode")
                    new = replace(new, decode=decode, precision=f"{new.precision}; decode steps run {decode.file}")
            entries[graph] = new
            choices[graph] = new.precision
        for f in [*src_m.tokenizer_files, SCHEDULE_FILE]:
            if (source / f).is_file():
                shutil.copy2(source / f, tmp / f)
        layers = [entries[graph_name(i)] for i in range(src_m.num_layers)]
        adapters = [entries[adapter_name(l)] for l in src_m.adapter_graphs()] if src_m.entry_adapter else None
        manifest = replace(src_m, graphs=Graphs(entries[EMBED], entries[LM_HEAD], layers, adapters),
                           quantization=_record(config, target, source, src_m, shards, choices, warning, data,
                                                time.perf_counter() - t0))
        manifest.save(tmp)
        from skipdecode.runtime.onnxruntime_backend import OnnxRuntimeBackend

        OnnxRuntimeBackend(tmp, threads=threads)  # loads (hashes, sessions) before it is moved into place
        if check_prompts:
            from skipdecode.calibration.check import agreement

            schedule = src_m.deployed_schedule()  # what `skipdecode run` deploys by default
            log(f"checking against {source} on {len(check_prompts)} prompts under {schedule.describe()} ...")
            manifest.quantization["check"] = agreement(source, tmp, check_prompts, schedule, check_tokens, threads)
            manifest.save(tmp)
    return manifest


def _record(config: QuantConfig, target: str, source: Path, src_m: Manifest, shards, choices: dict, warning,
            data, seconds: float) -> dict:
    import onnxruntime

    cal = None
    if shards is not None:
        i = shards.index
        cal = {"folder": str(shards.folder.resolve()), "data": i.get("data"), "samples": i["samples"],
               "seed": i["seed"], "max_new_tokens": i["max_new_tokens"], "schedule": i["schedule"],
               "schedule_mode": i["schedule_mode"], "schedule_text": shards.schedule.describe(),
               "export_manifest_sha256": i["export"]["manifest_sha256"],
               "generated_tokens": i["generated_tokens"], "prompt_tokens": i["prompt_tokens"]}
    cfg = asdict(config)
    if cfg["outlier_ratio"] == float("inf"):
        cfg["outlier_ratio"] = None  # JSON has no infinity: null = never fall back
    return {
        "method": config.method, "target": target, "config": cfg,
        "reduced_weights": config.method.startswith("int8") and config.reduced_weights,
        "source": {"path": str(source.resolve()), "manifest_sha256": sha256_file(source / MANIFEST),
                   "bytes": sum(e.bytes for _, e in src_m.named_graphs())},
        "calibration": cal, "data": data,
        "schedule_warning": warning,
        "graphs": choices,
        "tools": {"onnxruntime": onnxruntime.__version__, "quantizer": "onnxruntime.quantization"},
        "seconds": round(seconds, 2),
    }
