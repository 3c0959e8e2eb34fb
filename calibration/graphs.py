"""Quantize one graph of an export with ONNX Runtime's tools, and check the contract survived.

Only ``MatMul`` nodes with a constant weight are quantized (the projections: packed QKV, o_proj,
the MLP, the LM head). Everything else stays float, deliberately:

- ``GroupQueryAttention`` (a contrib op no quantizer knows) and its in-place KV buffers: the graph
  inputs/outputs ``past_*``/``present_*`` must stay float and bound straight to the op, or the
  runtime's shared-buffer binding breaks; ``check_contract`` verifies it after every method.
- the attention MatMuls of the standard-op layers (both operands are activations): excluded by
  ``MatMulConstBOnly``, so K/V never pass a Q/DQ pair.
- norms, residual adds, SiLU/GELU, RoPE tables: cheap, and the outlier-prone part of the model.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader

GQA = ("com.microsoft", "GroupQueryAttention")
KV_NAMES = ("past_key", "past_value", "present_key", "present_value", "new_key", "new_value")
QUANTIZED_OPS = ["MatMul"]
FLOAT = {"DefaultTensorType": onnx.TensorProto.FLOAT}
"""ONNX shape inference stops at contrib ops; every activation of these graphs is float32."""


@contextlib.contextmanager
def _quiet():
    """The quantizers log per node, and warn on the root logger to run their pre-processing
    (shape inference and folding that know nothing of GroupQueryAttention)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def typed(src: Path) -> onnx.ModelProto:
    """The graph with every intermediate's type. The quantizers skip tensors of unknown type, and
    ONNX's shape inference stops at contrib ops (GroupQueryAttention): graphs with contrib ops go
    through ORT's symbolic shape inference, which knows them."""
    model = onnx.load(src)
    if not any(n.domain == "com.microsoft" for n in model.graph.node):
        return onnx.shape_inference.infer_shapes(model)
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    return SymbolicShapeInference.infer_shapes(model, auto_merge=True)


class FeedReader(CalibrationDataReader):
    """ORT's data reader over a callable that returns a fresh iterator of feed dicts."""

    def __init__(self, make_iter):
        self.make_iter = make_iter
        self._it: Iterator[dict] = iter(make_iter())

    def get_next(self) -> dict | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.make_iter())


def int8_dynamic(src: Path, dst: Path, per_channel: bool, reduce_range: bool = False) -> None:
    """Weights int8 (symmetric; 7-bit with ``reduce_range``), activations quantized per call at run
    time (uint8)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(typed(src), dst, op_types_to_quantize=QUANTIZED_OPS, per_channel=per_channel,
                         weight_type=QuantType.QInt8, reduce_range=reduce_range,
                         extra_options={"MatMulConstBOnly": True, **FLOAT})


def int8_static(src: Path, dst: Path, feeds, per_channel: bool, symmetric_activations: bool,
                exclude: Iterable[str] = (), dynamic_fallback: bool = True,
                ranges: dict[str, tuple[float, float]] | None = None, reduce_range: bool = False) -> None:
    """QDQ int8: weights int8 symmetric (7-bit with ``reduce_range``), activation scales from the
    recorded calls (ORT's MinMax calibrator, or ``ranges``: activation -> (lo, hi) computed by calibration/outliers.py, given to
    the quantizer as ``TensorQuantOverrides``).

    ``symmetric_activations``: int8 activations with zero point 0 (what TensorRT's explicit
    quantization takes); otherwise uint8 asymmetric (ONNX Runtime CPU's U8S8 kernels).
    ``feeds``: a callable returning a fresh iterator of feed dicts. ``exclude``: MatMul nodes left
    out of static quantization (calibration/outliers.py); with ``dynamic_fallback`` they are then
    quantized dynamically, else they stay float. (No ``CalibMaxIntermediateOutputs``: onnxruntime
    1.32's MinMaxCalibrater drops each full chunk without taking its range. Its per-call outputs
    are ReduceMin/ReduceMax scalars, so keeping them all costs little.)
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    act = QuantType.QInt8 if symmetric_activations else QuantType.QUInt8
    overrides = {name: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}] for name, (lo, hi) in (ranges or {}).items()}
    exclude = list(exclude)
    with _quiet():
        quantize_static(typed(src), dst, FeedReader(feeds), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=QUANTIZED_OPS, per_channel=per_channel, activation_type=act,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax, reduce_range=reduce_range,
                        calibration_providers=["CPUExecutionProvider"], nodes_to_exclude=exclude,
                        extra_options={"MatMulConstBOnly": True, "WeightSymmetric": True,
                                       "ActivationSymmetric": symmetric_activations,
                                       "OpTypesToExcludeOutputQuantization": QUANTIZED_OPS,
                                       **({"TensorQuantOverrides": overrides} if overrides else {}), **FLOAT})
        if exclude and dynamic_fallback:
            quantize_dynamic(typed(dst), dst, op_types_to_quantize=QUANTIZED_OPS, nodes_to_quantize=exclude,
                             per_channel=per_channel, weight_type=QuantType.QInt8, reduce_range=reduce_range,
                             extra_options={"MatMulConstBOnly": True, **FLOAT})


def int4_weight(src: Path, dst: Path, block_size: int, accuracy_level: int) -> None:
    """4-bit weight-only (``MatMulNBits``, symmetric, one scale per ``block_size`` inputs)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    with _quiet():
        q = MatMulNBitsQuantizer(onnx.load(src), bits=4, block_size=block_size, is_symmetric=True,
                                 accuracy_level=accuracy_level, op_types_to_quantize=tuple(QUANTIZED_OPS))
        q.process()
        q.model.save_model_to_file(str(dst), use_external_data_format=False)


def _io(values) -> list[tuple]:
    return [(v.name, v.type.SerializeToString()) for v in values]


def check_contract(original: onnx.ModelProto, quantized: onnx.ModelProto, graph: str) -> dict:
    """``onnx.checker``, unchanged graph I/O, GQA and its KV bindings untouched; op counts."""
    try:
        onnx.checker.check_model(quantized)
    except onnx.checker.ValidationError as e:
        raise RuntimeError(f"{graph}: the quantized graph fails onnx.checker: {str(e).splitlines()[0]}") from None
    g, q = original.graph, quantized.graph
    if _io(g.input) != _io(q.input) or _io(g.output) != _io(q.output):
        raise RuntimeError(f"{graph}: quantization changed the graph inputs/outputs (the runtime binds them by name)")
    gqa = lambda m: [n for n in m.graph.node if (n.domain, n.op_type) == GQA]  # noqa: E731
    before, after = gqa(original), gqa(quantized)
    if len(before) != len(after):
        raise RuntimeError(f"{graph}: {len(before)} GroupQueryAttention node(s) before quantization, {len(after)} after")
    for a, b in zip(before, after):
        same_kv = list(a.input[3:7]) == list(b.input[3:7]) and list(a.output[1:]) == list(b.output[1:])
        if not same_kv or a.attribute != b.attribute:
            raise RuntimeError(f"{graph}: GroupQueryAttention's KV inputs/outputs or attributes changed")
    for name in KV_NAMES:  # nothing new may read or write a KV buffer (no Q/DQ on the cache)
        if _touching(original, name) != _touching(quantized, name):
            raise RuntimeError(f"{graph}: quantization changed the nodes that read or write {name}")
    return op_counts(quantized)


def _touching(model: onnx.ModelProto, name: str) -> list[tuple[str, str]]:
    return sorted((n.domain, n.op_type) for n in model.graph.node if name in n.input or name in n.output)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return dict(sorted(counts.items()))


def quantized_ops(counts: dict[str, int]) -> Iterable[str]:
    names = ("DynamicQuantizeMatMul", "MatMulInteger", "DynamicQuantizeLinear", "QuantizeLinear",
             "DequantizeLinear", "MatMulNBits", "QLinearMatMul", "GatherBlockQuantized")
    return [f"{n} x{counts[n]}" for n in names if n in counts]


def int8_gather(src: Path, dst: Path) -> None:
    """The embedding table in int8 (Gather of int8 rows, then DequantizeLinear)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(src, dst, op_types_to_quantize=["Gather"], weight_type=QuantType.QInt8, extra_options=FLOAT)


def int4_gather(src: Path, dst: Path, block_size: int) -> None:
    """The embedding table in int4 blocks along the hidden axis (``GatherBlockQuantized``)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    cfg = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, op_types_to_quantize=("Gather",),
                                       quant_axes=(("Gather", 1),))
    with _quiet():
        q = MatMulNBitsQuantizer(onnx.load(src), algo_config=cfg)
        q.process()
        q.model.save_model_to_file(str(dst), use_external_data_format=False)
