"""TensorRT engine bookkeeping that runs anywhere: profiles, the version/GPU guard, errors.
The engines themselves are built and run in tests/runtime/test_tensorrt_backend.py (GPU only)."""

import importlib.util
import json

import pytest

from skipdecode.cli.main import main
from skipdecode.errors import SkipDecodeError
from skipdecode.runtime.tensorrt_engines import ENGINES, FORMAT_VERSION, check_compatible, load_engine_record, profile_shapes

LAYER_HIDDEN = ["batch", "seq", 576]
KV = ["batch", 3, 256, 64]


def test_profiles_cover_prefill_and_decode():
    assert profile_shapes(LAYER_HIDDEN, "prefill", 32, 200) == ((1, 1, 576), (16, 128, 576), (32, 200, 576))
    assert profile_shapes(LAYER_HIDDEN, "decode", 32, 200) == ((1, 1, 576), (32, 1, 576), (32, 1, 576))
    assert profile_shapes(KV, "decode", 8, 200) == ((1, 3, 256, 64), (8, 3, 256, 64), (8, 3, 256, 64))


RECORD = {"format_version": FORMAT_VERSION, "tensorrt_version": "10.13.0", "gpu": "NVIDIA H100 80GB HBM3",
          "compute_capability": "9.0"}
HERE = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def test_engines_for_this_version_and_gpu_are_accepted():
    check_compatible(RECORD, "10.13.0", HERE, "engines/")


@pytest.mark.parametrize("version, here, message", [
    ("11.0.0", HERE, "built with TensorRT 10.13.0, this is TensorRT 11.0.0"),
    ("10.13.0", {"gpu": "NVIDIA L4", "compute_capability": "8.9"}, "built for NVIDIA H100 80GB HBM3 (sm 9.0), this is NVIDIA L4"),
])
def test_engines_for_another_version_or_gpu_are_refused(version, here, message):
    with pytest.raises(SkipDecodeError, match="rebuild") as e:
        check_compatible(RECORD, version, here, "engines/")
    assert message in str(e.value)


def test_tampered_engine_is_refused(tmp_path):
    (tmp_path / "embed.engine").write_bytes(b"plan")
    (tmp_path / ENGINES).write_text(json.dumps({**RECORD, "sha256": {"embed.engine": "0" * 64}}))
    with pytest.raises(SkipDecodeError, match="does not match its SHA-256"):
        load_engine_record(tmp_path)
    with pytest.raises(SkipDecodeError, match="no engines.json"):
        load_engine_record(tmp_path / "nowhere")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_build_engines_without_tensorrt_is_a_clean_error(tmp_path, capsys):
    assert main(["build-engines", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "TensorRT is not installed" in err and len(err.strip().splitlines()) == 1


def test_engines_are_built_per_manifest_graph_and_named_after_it(tmp_path, monkeypatch):
    """The bookkeeping of build_engines with TensorRT's builder faked: one engine per graph of the
    manifest, built with the graph's inputs, and the manifest and tokenizer carried along."""
    from types import SimpleNamespace

    from fake_export import write_export
    from skipdecode.runtime import tensorrt_engines

    built = []

    def build_engine(trt, onnx_path, inputs, *args):
        built.append((onnx_path.name, [spec.name for spec in inputs]))
        return b"plan of " + onnx_path.name.encode()

    monkeypatch.setattr(tensorrt_engines, "import_tensorrt", lambda: SimpleNamespace(__version__="10.13.0"))
    monkeypatch.setattr(tensorrt_engines, "gpu_identity", lambda: HERE)
    monkeypatch.setattr(tensorrt_engines, "build_engine", build_engine)
    export = tmp_path / "export"
    write_export(export, target="tensorrt", layer_kind="standard")
    record = tensorrt_engines.build_engines(export, tmp_path / "engines")
    assert record["engines"] == {"embed": "embed.engine", "layers": ["layer_000.engine", "layer_001.engine"],
                                 "lm_head": "lm_head.engine"}
    assert built == [(f, ["x"]) for f in ("embed.onnx", "layer_000.onnx", "layer_001.onnx", "lm_head.onnx")]
    assert load_engine_record(tmp_path / "engines")["sha256"].keys() == {"embed.engine", "layer_000.engine",
                                                                          "layer_001.engine", "lm_head.engine"}
    assert {"manifest.json", "tokenizer.json"} <= {p.name for p in (tmp_path / "engines").iterdir()}
    write_export(tmp_path / "gqa")
    with pytest.raises(SkipDecodeError, match="TensorRT needs an export made with"):
        tensorrt_engines.build_engines(tmp_path / "gqa", tmp_path / "never")


def test_an_export_with_entry_adapters_is_refused_in_one_line(tmp_path, monkeypatch):
    """Neither the engine builder nor the TensorRT backend has an adapter step yet (an onnxruntime
    export with standard layers would otherwise build)."""
    from types import SimpleNamespace

    from fake_export import write_export
    from skipdecode.runtime import tensorrt_backend, tensorrt_engines

    export = tmp_path / "export"
    write_export(export, num_layers=3, adapters=(2,), target="tensorrt", layer_kind="standard")
    fake_trt = SimpleNamespace(__version__="10.13.0")
    monkeypatch.setattr(tensorrt_engines, "import_tensorrt", lambda: fake_trt)
    with pytest.raises(SkipDecodeError, match=f"^{export}: entry adapters run on ONNX Runtime only for now "
                                              r"\(run it with the onnxruntime backend\)$"):
        tensorrt_engines.build_engines(export, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    for name, value in {"import_tensorrt": lambda: fake_trt, "load_engine_record": lambda d: {},
                        "check_compatible": lambda *a: None, "gpu_identity": lambda: {}}.items():
        monkeypatch.setattr(tensorrt_backend, name, value)
    with pytest.raises(SkipDecodeError, match=f"^{export}: entry adapters run on ONNX Runtime only for now"):
        tensorrt_backend.TensorRTBackend(export)
