"""manifest.json of a per-layer export, as a dataclass: read, validate, write, check against the files.

Written by `skipdecode export` (export/exporter.py) and `skipdecode calibrate`, read by every
runtime backend and tool, the way onnxruntime-genai's runtime reads its builder's
genai_config.json. Torch-free, numpy-free and onnx-free. The keys are export/README.md's;
``Manifest.to_dict`` writes them in the order the first exporter did, so exports of either
version read the same.

``load_manifest`` refuses, with one line naming the file and before any session is made:
- a file the manifest names (graph, external data, tokenizer) that lies outside the export
  folder: an absolute path, a ``..``, or a symlink leading out;
- with ``verify``, a graph file that is missing or does not match its SHA-256;
- an ONNX external-data ``location`` outside the folder, or one the manifest does not hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, dataclass, fields
from pathlib import Path, PurePosixPath

from skipdecode.errors import SkipDecodeError
from skipdecode.export.contract import EMBED, LAYER_KINDS, LM_HEAD, TARGETS, adapter_name, graph_name
from skipdecode.runtime.external_data import NotOnnx, external_data_locations
from skipdecode.schedule import Schedule

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    """numpy's name: float32, int64, ..."""
    shape: list
    """Sizes, and names for the dynamic axes ("batch", "sequence", ...)."""


@dataclass(frozen=True)
class GraphEntry:
    file: str
    """The ONNX file, relative to the export folder."""
    sha256: dict[str, str]
    """{file: digest} of the graph file and of its external data, if any."""
    bytes: int
    ops: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    op_types: dict[str, int] | None = None
    """Quantized graphs: nodes per op type."""
    precision: str | None = None
    """Quantized exports: what `skipdecode calibrate` did to this graph, and why."""
    decode: GraphEntry | None = None
    """A graph with the same contract that decode steps run instead (``calibrate --split-phases``:
    activation scales calibrated on decode steps alone); backends that do not know it run this one."""

    @classmethod
    def of(cls, model, folder: Path, files: list[str], **extra) -> "GraphEntry":
        """The entry of an onnx ModelProto saved as ``files`` (the graph file first, then its
        external data) in ``folder``; ``extra``: the optional fields."""
        import onnx  # the export side's: the runtime never calls this

        def specs(values):
            return [TensorSpec(v.name, onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                               [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values]

        return cls(file=files[0], sha256={f: sha256_file(folder / f) for f in files},
                   bytes=sum((folder / f).stat().st_size for f in files), ops=len(model.graph.node),
                   inputs=specs(model.graph.input), outputs=specs(model.graph.output), **extra)

    def __post_init__(self):
        if self.file not in self.sha256:
            raise ValueError(f"graph file {self.file!r} has no SHA-256 (its sha256 names {sorted(self.sha256)})")


@dataclass(frozen=True)
class Graphs:
    embed: GraphEntry
    lm_head: GraphEntry
    layers: list[GraphEntry]
    adapters: list[GraphEntry] | None = None
    """Entry-adapter graphs, one per layer of ``Manifest.entry_adapter["layers"]``, in that order
    (absent without adapters)."""


@dataclass(frozen=True)
class Manifest:
    target: str
    """The export target: onnxruntime or tensorrt (export/contract.py TARGETS)."""
    layer_kind: str
    """gqa (GroupQueryAttention, KV written in place) or standard (new K/V returned)."""
    family: str
    source: str
    """The model spec it was exported from."""
    config: dict
    """The model's HF config.json."""
    num_layers: int
    hidden_size: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    dtype: str
    """float32 or float16: weights, hidden states and KV (logits stay float32)."""
    max_batch: int
    max_seq: int
    """T_max: the KV buffer length."""
    max_positions: int
    top_k: int
    """K of lm_head's top-k outputs."""
    opset: int
    kv_layout: dict
    position_offset: int
    schedule: Schedule | None
    """The checkpoint's own schedule (its skipdecode.json's ``schedule``: the one it was fine-tuned
    under, or the one `skipdecode tune` chose), if any."""
    tokenizer_files: list[str]
    exporter: dict
    """Library versions, how each graph was built, seconds."""
    graphs: Graphs
    entry_adapter: dict | None = None
    """The checkpoint's entry adapters, as its skipdecode.json records them: ``{"rank": r or
    "full", "layers": [...]}``; ``graphs.adapters`` holds their graphs (absent without adapters)."""
    quantization: dict | None = None
    """`skipdecode calibrate`'s record: method, calibration data, what was done to each graph."""

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"target {self.target!r} (known: {', '.join(TARGETS)})")
        if self.layer_kind not in LAYER_KINDS:
            raise ValueError(f"layer_kind {self.layer_kind!r} (known: {', '.join(LAYER_KINDS)})")
        if len(self.graphs.layers) != self.num_layers:
            raise ValueError(f"{len(self.graphs.layers)} layer graphs listed, num_layers is {self.num_layers}")
        self._check_adapters()

    def _check_adapters(self):
        spec, graphs = self.entry_adapter, self.graphs.adapters
        if (spec is None) != (graphs is None):
            raise ValueError("entry_adapter and graphs.adapters: one is given without the other")
        if spec is None:
            return
        if sorted(spec) != ["layers", "rank"]:
            raise ValueError(f"entry_adapter: expected the keys rank and layers, got {sorted(spec)}")
        rank, layers = spec["rank"], spec["layers"]
        if isinstance(rank, bool) or not isinstance(rank, (int, str)) or (isinstance(rank, int) and rank < 1):
            raise ValueError(f"entry_adapter.rank {rank!r}: expected a positive rank or a name")
        if not (isinstance(layers, list) and all(isinstance(l, int) and not isinstance(l, bool) for l in layers)
                and layers == sorted(set(layers)) and all(1 <= l < self.num_layers for l in layers)):
            raise ValueError(f"entry_adapter.layers {layers!r}: expected increasing layers in 1..{self.num_layers - 1}")
        if len(graphs) != len(layers):
            raise ValueError(f"{len(graphs)} adapter graphs listed, entry_adapter.layers names {len(layers)}")

    def adapter_graphs(self) -> dict[int, GraphEntry]:
        """{layer: its entry adapter's graph}; empty without adapters."""
        if self.entry_adapter is None:
            return {}
        return dict(zip(self.entry_adapter["layers"], self.graphs.adapters))

    def named_graphs(self, decode: bool = False) -> list[tuple[str, GraphEntry]]:
        """(graph name, entry) for embed, layer_000 ..., the entry adapters (adapter_NNN) and
        lm_head; with ``decode``, each layer's decode graph too, as "layer_NNN (decode)"."""
        g = self.graphs
        named = [(EMBED, g.embed), *((graph_name(i), e) for i, e in enumerate(g.layers)),
                 *((adapter_name(l), e) for l, e in self.adapter_graphs().items()), (LM_HEAD, g.lm_head)]
        if decode:
            named += [(f"{n} (decode)", e.decode) for n, e in named if e.decode is not None]
        return named

    def deployed_schedule(self) -> Schedule:
        """What the export runs by default: its own schedule, else full depth."""
        return self.schedule or Schedule.full(self.num_layers)

    # ---- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Optional fields (those with a default) that are None are left out, so an export
        without them writes, and round-trips, the keys the first exporter wrote."""
        return {"format_version": FORMAT_VERSION,
                **{f.name: _plain(getattr(self, f.name)) for f in fields(self)
                   if not (f.default is None and getattr(self, f.name) is None)}}

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        """Raises ValueError naming the first key that is missing, unknown or of the wrong type."""
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version {data.get('format_version')!r}, this runtime reads {FORMAT_VERSION}")
        return _build(cls, {k: v for k, v in data.items() if k != "format_version"}, "")

    def save(self, folder: str | Path) -> None:
        (Path(folder) / MANIFEST).write_text(json.dumps(self.to_dict(), indent=2))


def _plain(value):
    """A manifest value as JSON data; optional entry fields that are None are left out."""
    if isinstance(value, Schedule):
        return value.to_dict()
    if isinstance(value, (TensorSpec, GraphEntry, Graphs)):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value) if getattr(value, f.name) is not None}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


_TYPES = {"int": int, "str": str, "dict": dict, "list": list}
_NESTED = {"GraphEntry": GraphEntry, "Graphs": Graphs}


def _build(cls, data, where: str):
    """``cls`` from its JSON object, every field's type checked; ``where``: the key path, for errors."""
    if not isinstance(data, dict):
        raise ValueError(f"{where.rstrip('.') or 'manifest'}: expected an object")
    known = {f.name: f for f in fields(cls)}
    if unknown := sorted(set(data) - set(known)):
        raise ValueError(f"unknown key {where}{unknown[0]}")
    values = {}
    for name, f in known.items():
        key = where + name
        if name not in data:
            if f.default is not MISSING:  # optional
                continue
            raise ValueError(f"no {key}")
        values[name] = _value(f.type, data[name], key)
    return cls(**values)


def _value(kind: str, value, key: str):
    optional = kind.endswith(" | None")
    kind = kind.removesuffix(" | None")
    if value is None and optional:
        return None
    base = kind.split("[")[0]
    if base == "Schedule":
        try:
            return Schedule.from_dict(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{key}: invalid schedule ({e})") from None
    if base in _NESTED:
        return _build(_NESTED[base], value, key + ".")
    if kind == "list[GraphEntry]" and isinstance(value, list):
        return [_build(GraphEntry, v, f"{key}[{i}].") for i, v in enumerate(value)]
    if kind == "list[TensorSpec]" and isinstance(value, list):
        return [_build(TensorSpec, v, f"{key}[{i}].") for i, v in enumerate(value)]
    expected = _TYPES[base]
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ValueError(f"{key}: expected {base}, got {type(value).__name__}")
    if kind == "list[str]" and not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key}: expected a list of strings")
    return value


# ---- reading an export folder -------------------------------------------------------------------
def outside(root: Path, name: str) -> str | None:
    """Why ``root / name`` is not inside ``root`` (an absolute path, a ``..``, a symlink of the
    file or of a folder on its way leading out), or None when it is."""
    if not name:
        return "an empty name"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "'..' in the path"
    try:
        path, top = (root / name).resolve(), root.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        return f"it does not resolve: {e}"
    if path == top or not path.is_relative_to(top):
        return f"it resolves to {path}"
    return None


def load_manifest(export_dir: str | Path, verify: bool = True) -> Manifest:
    """Read and check DIR/manifest.json (see the module docstring); with ``verify``, also every
    graph file's SHA-256. An engine folder (TensorRT) holds no graph files: ``verify=False``."""
    root = Path(export_dir)
    file = root / MANIFEST
    if not root.is_dir():
        raise SkipDecodeError(f"{root}: no such export folder")
    if not file.is_file():
        hint = " (a --target both export has onnxruntime/ and tensorrt/ inside)" if (root / "onnxruntime").is_dir() else ""
        raise SkipDecodeError(f"{root}: not an export (no {MANIFEST}){hint}")
    try:
        m = Manifest.from_dict(json.loads(file.read_text()))
    except json.JSONDecodeError as e:
        raise SkipDecodeError(f"{file}:{e.lineno}: invalid JSON ({e.msg})") from None
    except ValueError as e:
        raise SkipDecodeError(f"{file}: {e}") from None
    graphs = m.named_graphs(decode=True)
    named = [(f, f"{name} graph file") for name, e in graphs for f in (e.file, *e.sha256)]
    for f, what in named + [(f, "tokenizer file") for f in m.tokenizer_files]:
        if reason := outside(root, f):
            raise SkipDecodeError(f"{file}: {what} {f!r} points outside the export folder ({reason})")
    if verify:
        for name, e in graphs:
            for f, digest in e.sha256.items():
                path = root / f
                if not path.is_file():
                    raise SkipDecodeError(f"{path}: {name} graph file is missing (listed in {MANIFEST})")
                if sha256_file(path) != digest:
                    raise SkipDecodeError(f"{path}: {name} graph does not match its SHA-256 in {MANIFEST} "
                                          "(modified or corrupted; re-export)")
    for name, e in graphs:
        _check_external_data(root, name, e)
    return m


def _check_external_data(root: Path, name: str, e: GraphEntry) -> None:
    """Every external-data location of the graph stays inside ``root`` and is hashed by its entry."""
    graph = root / e.file
    if not graph.is_file():  # an engine folder, or verify=False: no session is made from it here
        return
    try:
        locations = external_data_locations(graph)
    except NotOnnx as err:
        raise SkipDecodeError(f"{graph}: the {name} graph is not a readable ONNX file ({err})") from None
    hashed = {(root / f).resolve() for f in e.sha256}
    for loc in locations:  # relative to the graph file's folder, as ONNX Runtime reads them
        rel = str(PurePosixPath(e.file).parent / loc) if loc and not loc.startswith(("/", "\\")) else loc
        if reason := outside(root, rel):
            raise SkipDecodeError(f"{graph}: external data {loc!r} points outside the export folder ({reason})")
        if (root / rel).resolve() not in hashed:
            raise SkipDecodeError(f"{graph}: external data {loc!r} is not listed in the {name} graph's sha256 "
                                  f"in {MANIFEST} (unverified weights)")

