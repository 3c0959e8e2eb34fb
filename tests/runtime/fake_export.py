"""A tiny export folder written without torch: small ONNX graphs from onnx.helper and a manifest
whose SHA-256s match, for tests of the manifest itself (not of the graph contract)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from skipdecode.export.contract import EMBED, LM_HEAD, adapter_name, graph_file, graph_name
from skipdecode.runtime.manifest import GraphEntry, Graphs, Manifest


def graph(name: str = "g", weights: np.ndarray | None = None) -> onnx.ModelProto:
    """y = x + w: one input, one output, one initializer."""
    w = numpy_helper.from_array(np.arange(4, dtype=np.float32) if weights is None else weights, "w")
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], name,
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def with_external_data(model: onnx.ModelProto, folder: Path, location: str) -> onnx.ModelProto:
    """``model`` with its initializer's bytes moved to ``location`` (relative to ``folder``, as
    ONNX Runtime reads it), written there whatever the location says."""
    init = model.graph.initializer[0]
    data = init.raw_data or numpy_helper.to_array(init).tobytes()
    target = folder / location if not Path(location).is_absolute() else Path(location)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    init.ClearField("raw_data")
    init.ClearField("float_data")
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(data)))):
        init.external_data.add(key=key, value=value)
    init.data_location = TensorProto.EXTERNAL
    return model


def write_export(folder: Path, num_layers: int = 2, files: dict[str, list[str]] | None = None,
                 adapters: tuple[int, ...] | None = None, **fields) -> Manifest:
    """Graphs embed.onnx, layer_NNN.onnx, lm_head.onnx (unless already in ``folder``) and a manifest;
    with ``adapters``, entry adapters (rank 2) at those layers too, adapter_NNN.onnx.

    ``files``: graph name -> [graph file, external data...] to record instead of the default file
    (any path, written or linked by the caller; its hash is taken wherever it points). ``fields``
    replace manifest fields."""
    folder.mkdir(parents=True, exist_ok=True)
    files = files or {}
    names = [EMBED, *map(graph_name, range(num_layers)), LM_HEAD, *map(adapter_name, adapters or ())]
    entries = {}
    for name in names:
        listed = files.get(name, [graph_file(name)])
        path = folder / listed[0]
        if not path.exists() and not path.is_symlink():
            onnx.save(graph(name), path)
        entries[name] = GraphEntry.of(onnx.load(path, load_external_data=False), folder, listed)
    (folder / "tokenizer.json").write_text("{}")
    m = Manifest(
        target="onnxruntime", layer_kind="gqa", family="llama", source="tiny", config={}, num_layers=num_layers,
        hidden_size=4, num_kv_heads=1, head_dim=4, vocab_size=16, dtype="float32", max_batch=2, max_seq=8,
        max_positions=8, top_k=4, opset=18, kv_layout={"axes": "BNSH"}, position_offset=0, schedule=None,
        tokenizer_files=["tokenizer.json"], exporter={"skipdecode": "test"},
        graphs=Graphs(entries[EMBED], entries[LM_HEAD], [entries[graph_name(i)] for i in range(num_layers)],
                      None if adapters is None else [entries[adapter_name(l)] for l in adapters]),
        entry_adapter=None if adapters is None else {"rank": 2, "layers": list(adapters)})
    m = dataclasses.replace(m, **fields)
    m.save(folder)
    return m
