"""runtime/manifest.py: the typed manifest reads and writes export/README.md's JSON, refuses a
malformed or tampered one, and refuses any file that points outside its export folder (crafted
manifests whose hashes match, so the path check is what refuses them) before a session is made."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from fake_export import graph, with_external_data, write_export  # noqa: E402
from skipdecode.errors import SkipDecodeError  # noqa: E402
from skipdecode.runtime.external_data import NotOnnx, external_data_locations  # noqa: E402
from skipdecode.runtime.manifest import MANIFEST, GraphEntry, Manifest, load_manifest  # noqa: E402
from skipdecode.schedule import Schedule  # noqa: E402

KEYS = ["format_version", "target", "layer_kind", "family", "source", "config", "num_layers", "hidden_size",
        "num_kv_heads", "head_dim", "vocab_size", "dtype", "max_batch", "max_seq", "max_positions", "top_k", "opset",
        "kv_layout", "position_offset", "schedule", "tokenizer_files", "exporter", "graphs"]
"""manifest.json's keys in the order the first exporter wrote them (export/README.md)."""


def refused(folder, match, verify=True) -> str:
    with pytest.raises(SkipDecodeError, match=match) as e:
        load_manifest(folder, verify=verify)
    assert "\n" not in str(e.value)  # one line
    return str(e.value)


# ---- the dataclass and its JSON -------------------------------------------------------------------
def test_written_manifest_reads_back_equal_with_the_readme_keys(tmp_path):
    m = write_export(tmp_path / "e", schedule=Schedule(2, 2, 1, window=4))
    raw = json.loads((tmp_path / "e" / MANIFEST).read_text())
    assert list(raw) == KEYS and raw["format_version"] == 1 and raw["schedule"]["window"] == 4
    assert list(raw["graphs"]) == ["embed", "lm_head", "layers"]
    assert list(raw["graphs"]["embed"]) == ["file", "sha256", "bytes", "ops", "inputs", "outputs"]  # no None fields
    assert raw["graphs"]["embed"]["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}]
    back = load_manifest(tmp_path / "e")
    assert back == m and Manifest.from_dict(back.to_dict()) == m
    assert back.layer_kind == "gqa" and back.graphs.layers[1].file == "layer_001.onnx"
    assert back.graphs.embed.inputs[0].shape == ["batch", 4] and back.schedule == Schedule(2, 2, 1, window=4)
    assert [n for n, _ in back.named_graphs()] == ["embed", "layer_000", "layer_001", "lm_head"]
    assert back.deployed_schedule() == Schedule(2, 2, 1, window=4)
    assert dataclasses.replace(back, schedule=None).deployed_schedule() == Schedule.full(2)


def test_a_quantized_manifest_keeps_its_record_and_optional_entry_fields(tmp_path):
    """What `skipdecode calibrate --split-phases` writes: precision, op_types, a decode entry, quantization."""
    folder = tmp_path / "q"
    m = write_export(folder)
    onnx.save(graph("layer_000.decode"), folder / "layer_000.decode.onnx")
    decode = GraphEntry.of(graph(), folder, ["layer_000.decode.onnx"], op_types={"Add": 1}, precision="int8")
    layers = [dataclasses.replace(m.graphs.layers[0], op_types={"Add": 1}, precision="int8", decode=decode),
              m.graphs.layers[1]]
    q = dataclasses.replace(m, graphs=dataclasses.replace(m.graphs, layers=layers),
                            quantization={"method": "int8-static", "graphs": {"layer_000": "int8"}})
    q.save(folder)
    raw = json.loads((folder / MANIFEST).read_text())
    assert list(raw)[-1] == "quantization"
    assert list(raw["graphs"]["layers"][0])[-3:] == ["op_types", "precision", "decode"]
    back = load_manifest(folder)
    assert back == q and back.graphs.layers[0].decode.file == "layer_000.decode.onnx"
    assert [n for n, _ in back.named_graphs(decode=True)][-1] == "layer_000 (decode)"
    (folder / "layer_000.decode.onnx").unlink()  # the decode graph is verified like the others
    refused(folder, r"layer_000\.decode\.onnx: layer_000 \(decode\) graph file is missing")


def test_entry_adapters_are_listed_hashed_and_read_back(tmp_path):
    folder = tmp_path / "a"
    m = write_export(folder, num_layers=4, adapters=(2, 3))
    raw = json.loads((folder / MANIFEST).read_text())
    assert list(raw) == [*KEYS, "entry_adapter"] and raw["entry_adapter"] == {"rank": 2, "layers": [2, 3]}
    assert list(raw["graphs"]) == ["embed", "lm_head", "layers", "adapters"]
    back = load_manifest(folder)
    assert back == m and Manifest.from_dict(back.to_dict()) == m
    assert [n for n, _ in back.named_graphs()] == ["embed", *(f"layer_00{i}" for i in range(4)), "adapter_002",
                                                   "adapter_003", "lm_head"]
    assert {l: e.file for l, e in back.adapter_graphs().items()} == {2: "adapter_002.onnx", 3: "adapter_003.onnx"}
    assert write_export(tmp_path / "none").adapter_graphs() == {}
    onnx.save(graph(weights=np.ones(4, np.float32)), folder / "adapter_003.onnx")  # tampered
    refused(folder, r"adapter_003\.onnx: adapter_003 graph does not match its SHA-256")
    (folder / "adapter_003.onnx").unlink()
    refused(folder, r"adapter_003\.onnx: adapter_003 graph file is missing")


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("entry_adapter"), "entry_adapter and graphs.adapters: one is given without the other"),
    (lambda d: d["graphs"].pop("adapters"), "entry_adapter and graphs.adapters: one is given without the other"),
    (lambda d: d["entry_adapter"].update(layers=[2]), "2 adapter graphs listed, entry_adapter.layers names 1"),
    (lambda d: d["entry_adapter"].update(layers=[3, 2]), r"entry_adapter.layers \[3, 2\]: expected increasing"),
    (lambda d: d["entry_adapter"].update(layers=[2, 4]), r"entry_adapter.layers \[2, 4\]: .* in 1..3"),
    (lambda d: d["entry_adapter"].update(rank=0), "entry_adapter.rank 0: expected a positive rank"),
    (lambda d: d["entry_adapter"].pop("rank"), "entry_adapter: expected the keys rank and layers"),
    (lambda d: d["graphs"]["adapters"][0].update(file="../x.onnx"), "graph file '../x.onnx' has no SHA-256"),
])
def test_malformed_adapter_entries_are_refused(tmp_path, change, message):
    folder = tmp_path / "a"
    write_export(folder, num_layers=4, adapters=(2, 3))
    raw = json.loads((folder / MANIFEST).read_text())
    change(raw)
    (folder / MANIFEST).write_text(json.dumps(raw))
    assert refused(folder, message).startswith(f"{folder / MANIFEST}: ")


def test_an_adapter_graph_pointing_outside_the_folder_is_refused(tmp_path):
    (tmp_path / "outside.onnx").write_bytes(graph().SerializeToString())
    folder = tmp_path / "a"
    write_export(folder, num_layers=4, adapters=(2,), files={"adapter_002": ["../outside.onnx"]})
    refused(folder, r"adapter_002 graph file '\.\./outside\.onnx' points outside the export folder")


def test_an_export_written_before_the_dataclass_still_loads(tmp_path):
    """A manifest as export/exporter.py wrote it as a dict literal (format 1), byte for byte after a round trip."""
    folder = tmp_path / "old"
    m = write_export(folder)
    text = json.dumps({"format_version": 1, **{k: v for k, v in m.to_dict().items() if k != "format_version"}},
                      indent=2)
    (folder / MANIFEST).write_text(text)
    assert json.dumps(load_manifest(folder).to_dict(), indent=2) == text


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("num_kv_heads"), "no num_kv_heads"),
    (lambda d: d.update(colour="blue"), "unknown key colour"),
    (lambda d: d.update(max_seq="8"), "max_seq: expected int, got str"),
    (lambda d: d.update(max_seq=True), "max_seq: expected int, got bool"),
    (lambda d: d.update(tokenizer_files=[3]), "tokenizer_files: expected a list of strings"),
    (lambda d: d.update(format_version=2), "format_version 2, this runtime reads 1"),
    (lambda d: d.update(target="tflite"), "target 'tflite'"),
    (lambda d: d.update(layer_kind="fused"), "layer_kind 'fused'"),
    (lambda d: d.update(num_layers=3), "2 layer graphs listed, num_layers is 3"),
    (lambda d: d.update(schedule={"num_layers": 2, "max_layers": 9, "min_layers": 1}), "schedule: invalid schedule"),
    (lambda d: d["graphs"].pop("lm_head"), "no graphs.lm_head"),
    (lambda d: d["graphs"]["layers"][1].pop("sha256"), r"no graphs\.layers\[1\]\.sha256"),
    (lambda d: d["graphs"]["layers"][1]["inputs"][0].update(rank=2), r"unknown key graphs\.layers\[1\]\.inputs\[0\]\.rank"),
    (lambda d: d["graphs"]["embed"].update(file="other.onnx"), "graph file 'other.onnx' has no SHA-256"),
])
def test_malformed_manifests_are_refused_in_one_line_naming_the_file(tmp_path, change, message):
    folder = tmp_path / "e"
    write_export(folder)
    raw = json.loads((folder / MANIFEST).read_text())
    change(raw)
    (folder / MANIFEST).write_text(json.dumps(raw))
    assert refused(folder, message).startswith(f"{folder / MANIFEST}: ")


def test_missing_folder_manifest_or_json(tmp_path):
    refused(tmp_path / "nowhere", "no such export folder")
    (tmp_path / "both" / "onnxruntime").mkdir(parents=True)
    refused(tmp_path / "both", r"not an export \(no manifest.json\) \(a --target both export")
    (tmp_path / "both" / MANIFEST).write_text("{")
    refused(tmp_path / "both", r"manifest.json:1: invalid JSON")


def test_modified_or_missing_graphs_are_refused_only_when_verifying(tmp_path):
    folder = tmp_path / "e"
    write_export(folder)
    onnx.save(graph(weights=onnx.numpy_helper.to_array(graph().graph.initializer[0]) + 1), folder / "layer_001.onnx")
    refused(folder, r"layer_001\.onnx: layer_001 graph does not match its SHA-256")
    assert load_manifest(folder, verify=False).num_layers == 2  # an engine folder carries no graphs to hash
    (folder / "layer_001.onnx").unlink()
    refused(folder, r"layer_001\.onnx: layer_001 graph file is missing")
    assert load_manifest(folder, verify=False).num_layers == 2


# ---- files outside the export folder --------------------------------------------------------------
def test_graph_files_outside_the_folder_are_refused_though_their_hashes_match(tmp_path):
    outside = tmp_path / "outside.onnx"
    onnx.save(graph("elsewhere"), outside)
    cases = {"../outside.onnx": "'..' in the path", "sub/../../outside.onnx": "'..' in the path",
             str(outside): "an absolute path"}
    for i, (name, reason) in enumerate(cases.items()):
        folder = tmp_path / f"e{i}"
        (folder / "sub").mkdir(parents=True)
        write_export(folder, files={"layer_001": [name]})  # the hash is the outside file's own
        message = refused(folder, "points outside the export folder")
        assert message == (f"{folder / MANIFEST}: layer_001 graph file {name!r} points outside the export folder "
                           f"({reason})")


def test_a_symlink_leading_out_is_refused(tmp_path):
    outside = tmp_path / "secret"
    outside.mkdir()
    onnx.save(graph("elsewhere"), outside / "w.onnx")
    folder = tmp_path / "e"
    folder.mkdir()
    (folder / "layer_000.onnx").symlink_to(outside / "w.onnx")
    write_export(folder)  # hashed through the link: the hash matches
    refused(folder, rf"layer_000 graph file 'layer_000.onnx' points outside the export folder \(it resolves to "
                    rf"{outside / 'w.onnx'}\)", verify=False)
    folder2 = tmp_path / "e2"
    folder2.mkdir()
    (folder2 / "graphs").symlink_to(outside)  # a linked folder on the way
    write_export(folder2, files={"lm_head": ["graphs/w.onnx"]})
    refused(folder2, "lm_head graph file 'graphs/w.onnx' points outside")
    folder3 = tmp_path / "e3"
    folder3.mkdir()
    (folder3 / "inside.onnx").symlink_to(folder3 / "sub" / "real.onnx")  # a link that stays inside is fine
    (folder3 / "sub").mkdir()
    onnx.save(graph(), folder3 / "sub" / "real.onnx")
    write_export(folder3, files={"embed": ["inside.onnx"]})
    assert load_manifest(folder3).graphs.embed.file == "inside.onnx"


def test_tokenizer_files_outside_the_folder_are_refused(tmp_path):
    folder = tmp_path / "e"
    write_export(folder, tokenizer_files=["tokenizer.json", "../tokenizer.json"])
    refused(folder, r"tokenizer file '\.\./tokenizer\.json' points outside the export folder \('\.\.' in the path\)")


def test_external_data_outside_the_folder_is_refused(tmp_path):
    """A graph whose tensor lives at ../outside.bin: the manifest hashes the graph file (it matches);
    ONNX Runtime would read the outside file. The CVE-2022-25882 class."""
    folder = tmp_path / "e"
    folder.mkdir()
    onnx.save(with_external_data(graph(), folder, "../outside.bin"), folder / "layer_000.onnx")
    assert (tmp_path / "outside.bin").is_file()
    write_export(folder)
    message = refused(folder, r"external data '\.\./outside\.bin' points outside the export folder")
    assert message.startswith(f"{folder / 'layer_000.onnx'}: ")
    refused(folder, "points outside", verify=False)

    absolute = tmp_path / "abs"
    absolute.mkdir()
    onnx.save(with_external_data(graph(), absolute, str(tmp_path / "outside.bin")), absolute / "embed.onnx")
    write_export(absolute)
    refused(absolute, r"external data '/.*outside\.bin' points outside the export folder \(an absolute path\)")


def test_external_data_must_be_hashed_by_the_manifest(tmp_path):
    folder = tmp_path / "e"
    folder.mkdir()
    onnx.save(with_external_data(graph(), folder, "lm_head.onnx.data"), folder / "lm_head.onnx")
    write_export(folder)  # lists lm_head.onnx alone: its weights would go unchecked
    refused(folder, r"external data 'lm_head\.onnx\.data' is not listed in the lm_head graph's sha256")
    write_export(folder, files={"lm_head": ["lm_head.onnx", "lm_head.onnx.data"]})  # as the exporter writes it
    assert list(load_manifest(folder).graphs.lm_head.sha256) == ["lm_head.onnx", "lm_head.onnx.data"]
    (folder / "lm_head.onnx.data").write_bytes(b"\0" * 16)
    refused(folder, r"lm_head\.onnx\.data: lm_head graph does not match its SHA-256")


def test_refused_before_any_session_is_made(tmp_path, monkeypatch, capsys):
    ort = pytest.importorskip("onnxruntime")
    from skipdecode.cli.main import main
    from skipdecode.runtime.onnxruntime_backend import OnnxRuntimeBackend

    folder = tmp_path / "e"
    folder.mkdir()
    onnx.save(with_external_data(graph(), folder, "../outside.bin"), folder / "layer_001.onnx")
    write_export(folder)

    def no_session(*args, **kwargs):
        raise AssertionError("a session was made")

    monkeypatch.setattr(ort, "InferenceSession", no_session)
    with pytest.raises(SkipDecodeError, match="points outside the export folder"):
        OnnxRuntimeBackend(folder, verify=False)
    assert main(["run", "--export", str(folder), "--prompt", "w3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "external data '../outside.bin' points outside the export folder" in err


# ---- the external-data scan without the onnx package ----------------------------------------------
def test_external_locations_are_found_wherever_onnx_keeps_tensors(tmp_path):
    """Initializers, Constant node attributes and a subgraph's initializers: the same locations as
    onnx's own helper lists."""
    from onnx import TensorProto, helper, numpy_helper
    from onnx.external_data_helper import _get_all_tensors

    def external(name, location):
        t = numpy_helper.from_array(onnx.numpy_helper.to_array(graph().graph.initializer[0]), name)
        t.ClearField("raw_data")
        t.external_data.add(key="location", value=location)
        t.data_location = TensorProto.EXTERNAL
        return t

    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    branch = helper.make_graph([helper.make_node("Identity", ["b"], ["y"])], "branch", [], [y], [external("b", "sub.bin")])
    nodes = [helper.make_node("Constant", [], ["c"], value=external("c", "const.bin")),
             helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)]
    g = helper.make_graph(nodes, "main", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])], [y],
                          [external("w", "init.bin")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, tmp_path / "m.onnx")
    expected = sorted(e.value for t in _get_all_tensors(model) for e in t.external_data if e.key == "location")
    assert sorted(external_data_locations(tmp_path / "m.onnx")) == expected == [
        "const.bin", "init.bin", "sub.bin", "sub.bin"]
    onnx.save(graph(), tmp_path / "plain.onnx")
    assert external_data_locations(tmp_path / "plain.onnx") == []
    (tmp_path / "junk.onnx").write_bytes(b"\xff\xff\xff")
    with pytest.raises(NotOnnx):
        external_data_locations(tmp_path / "junk.onnx")
