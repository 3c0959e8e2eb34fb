"""Build TensorRT engines from a `--target tensorrt` export (`skipdecode build-engines`).

One engine per graph (embed, every layer, lm_head), each with two optimisation profiles:
0 for prefill (S up to ``max_prompt``) and 1 for decode (S = 1), batch 1..``max_batch``. The
network is strongly typed, which TensorRT 10 needs as a flag and TensorRT 11 always does (11
removed the FP16/INT8 builder flags): precision comes from the graph, so an fp16 export gives
fp16 engines. ``engines.json`` records the TensorRT version and the GPU; engines are refused on
any other version or GPU, since TensorRT plans are not portable.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from skipdecode.errors import SkipDecodeError
from skipdecode.io import atomic_dir, atomic_write_text
from skipdecode.export.contract import ADAPTERS_ONNXRUNTIME_ONLY, layer_index
from skipdecode.runtime.manifest import MANIFEST, Manifest, TensorSpec, load_manifest, sha256_file

ENGINES = "engines.json"
FORMAT_VERSION = 1
PROFILES = ("prefill", "decode")


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise SkipDecodeError("TensorRT is not installed: pip install 'skipdecode[tensorrt]' on an NVIDIA machine") from None
    return trt


def check_no_adapters(manifest: Manifest, where) -> None:
    """The engines have no entry-adapter step yet: refuse an export that has adapters rather than
    run it as another model (`skipdecode export --target tensorrt` refuses such a checkpoint too)."""
    if manifest.entry_adapter is not None:
        raise SkipDecodeError(f"{where}: {ADAPTERS_ONNXRUNTIME_ONLY} (run it with the onnxruntime backend)")


def gpu_identity() -> dict:
    """Name and compute capability of the current CUDA device."""
    from skipdecode.runtime.cuda import cudart, check

    rt = cudart()
    device = check(rt.cudaGetDevice())
    props = check(rt.cudaGetDeviceProperties(device))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"gpu": name.strip("\x00 "), "compute_capability": f"{props.major}.{props.minor}"}


def profile_shapes(shape: list, profile: str, max_batch: int, max_prompt: int) -> tuple[tuple, tuple, tuple]:
    """(min, opt, max) for one input of the manifest ('batch', 'seq' and static dims)."""
    lo, opt, hi = [], [], []
    for d in shape:
        if isinstance(d, int):
            lo.append(d), opt.append(d), hi.append(d)
        elif "batch" in d:
            lo.append(1), opt.append(max(1, max_batch // 2 if profile == "prefill" else max_batch)), hi.append(max_batch)
        elif profile == "decode":
            lo.append(1), opt.append(1), hi.append(1)
        else:
            lo.append(1), opt.append(min(128, max_prompt)), hi.append(max_prompt)
    return tuple(lo), tuple(opt), tuple(hi)


def check_compatible(record: dict, trt_version: str, identity: dict, where: str) -> None:
    """Refuse engines built by another TensorRT version or for another GPU."""
    if record.get("format_version") != FORMAT_VERSION:
        raise SkipDecodeError(f"{where}: engines format {record.get('format_version')!r}, this runtime reads {FORMAT_VERSION}")
    if record.get("tensorrt_version") != trt_version:
        raise SkipDecodeError(f"{where}: engines built with TensorRT {record.get('tensorrt_version')}, this is "
                              f"TensorRT {trt_version}: rebuild with `skipdecode build-engines`")
    for key in ("gpu", "compute_capability"):
        if record.get(key) != identity[key]:
            raise SkipDecodeError(f"{where}: engines built for {record.get('gpu')} (sm {record.get('compute_capability')}), "
                                  f"this is {identity['gpu']} (sm {identity['compute_capability']}): rebuild with "
                                  "`skipdecode build-engines`")


def build_engine(trt, onnx_path: Path, inputs: list[TensorSpec], max_batch: int, max_prompt: int,
                 workspace_gb: float) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly is not None:
        flags |= 1 << int(strongly)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise SkipDecodeError(f"{onnx_path}: TensorRT cannot parse the graph ({errors})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    for profile_name in PROFILES:
        profile = builder.create_optimization_profile()
        for spec in inputs:
            profile.set_shape(spec.name, *profile_shapes(spec.shape, profile_name, max_batch, max_prompt))
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise SkipDecodeError(f"{onnx_path}: TensorRT failed to build an engine (see its log above)")
    return bytes(plan)


def build_engines(export_dir: str | Path, out: str | Path, max_batch: int = 32, max_prompt: int = 512,
                  workspace_gb: float = 4.0, overwrite: bool = False) -> dict:
    """Build every engine of a tensorrt-target export into ``out`` (atomically); returns engines.json."""
    from tqdm import tqdm

    trt = import_tensorrt()
    src, out = Path(export_dir), Path(out)
    manifest = load_manifest(src)
    if manifest.layer_kind != "standard":
        raise SkipDecodeError(f"{src}: built for target {manifest.target!r}; TensorRT needs an export made with "
                              "`skipdecode export --target tensorrt` (standard ONNX ops only)")
    check_no_adapters(manifest, src)
    if max_prompt + 1 > manifest.max_seq:
        max_prompt = manifest.max_seq - 1
    if out.exists() and not overwrite:
        raise SkipDecodeError(f"{out}: exists (use --overwrite)")
    with atomic_dir(out) as tmp:
        engines: dict = {"layers": []}
        for graph, entry in tqdm(manifest.named_graphs(), desc="build engines", unit="engine", file=sys.stderr):
            name = Path(entry.file).with_suffix(".engine").name
            plan = build_engine(trt, src / entry.file, entry.inputs, max_batch, max_prompt, workspace_gb)
            (tmp / name).write_bytes(plan)
            if layer_index(graph) is not None:
                engines["layers"].append(name)
            else:
                engines[graph] = name
        for f in src.iterdir():  # the export's manifest and tokenizer travel with the engines
            if f.is_file() and f.suffix != ".onnx" and not f.name.endswith(".onnx.data"):
                shutil.copy2(f, tmp / f.name)
        record = {
            "format_version": FORMAT_VERSION,
            "tensorrt_version": trt.__version__,
            **gpu_identity(),
            "export": str(src.resolve()),
            "export_manifest_sha256": sha256_file(src / MANIFEST),
            "max_batch": max_batch,
            "max_prompt": max_prompt,
            "profiles": list(PROFILES),
            "engines": engines,
            "sha256": {n: sha256_file(tmp / n) for n in [engines["embed"], *engines["layers"], engines["lm_head"]]},
        }
        atomic_write_text(tmp / ENGINES, json.dumps(record, indent=2))
    return record


def load_engine_record(engine_dir: str | Path) -> dict:
    root = Path(engine_dir)
    file = root / ENGINES
    if not file.is_file():
        raise SkipDecodeError(f"{root}: no {ENGINES} (build engines with `skipdecode build-engines EXPORT --out DIR`)")
    try:
        record = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise SkipDecodeError(f"{file}:{e.lineno}: invalid JSON ({e.msg})") from None
    for name, digest in record.get("sha256", {}).items():
        path = root / name
        if not path.is_file():
            raise SkipDecodeError(f"{path}: engine file is missing (listed in {ENGINES})")
        if sha256_file(path) != digest:
            raise SkipDecodeError(f"{path}: engine does not match its SHA-256 in {ENGINES} (rebuild)")
    return record
