"""Which projections one static activation scale can serve, measured on the calibration data.

LLMs carry a few massive activations (SmolLM2's late ``down_proj`` inputs reach ~2400 where the
median is ~0.2), so a single per-tensor int8 scale taken over every call rounds the ordinary
tokens to a couple of levels. Per MatMul we compare, on the recorded inputs, the per-token
relative rounding error of the static scale against that of a per-call scale (what dynamic
quantization uses at run time); where static costs more than ``RATIO`` times as much, the
MatMul keeps per-call quantization (ONNX Runtime) or float (TensorRT) instead.

>>> x = np.array([[1.0, -0.5, 0.25], [400.0, 1.0, -2.0]])
>>> round(row_error(x[:1], qdq(x[:1], *rng(x[:1], False), False)), 4)  # its own range: fine
0.0026
>>> round(row_error(x[:1], qdq(x[:1], *rng(x, False), False)), 3)  # the outlier's range: crushed
0.701
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

RATIO = 2.0
"""Static may cost up to this many times the per-call rounding error before a MatMul falls back."""


def rng(x: np.ndarray, symmetric: bool) -> tuple[float, float]:
    if symmetric:
        m = float(np.abs(x).max())
        return -m, m
    return min(float(x.min()), 0.0), max(float(x.max()), 0.0)


def qdq(x: np.ndarray, lo: float, hi: float, symmetric: bool) -> np.ndarray:
    """Quantize-dequantize as ONNX Runtime does: uint8 asymmetric, or int8 with zero point 0."""
    if symmetric:
        s = max(abs(lo), abs(hi)) / 127 or 1.0
        return np.clip(np.round(x / s), -127, 127) * s
    s = (hi - lo) / 255 or 1.0
    z = np.round(-lo / s)
    return (np.clip(np.round(x / s) + z, 0, 255) - z) * s


def row_error(x: np.ndarray, y: np.ndarray) -> float:
    """Mean over tokens of |x - y| / |x| (each token's own relative error)."""
    x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    norm = np.linalg.norm(x, axis=-1)
    keep = norm > 0
    return float(np.mean(np.linalg.norm(x - y, axis=-1)[keep] / norm[keep])) if keep.any() else 0.0


def weight_matmuls(model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """MatMul node name -> (activation input, weight initializer) for constant-weight MatMuls."""
    inits = {i.name for i in model.graph.initializer}
    return {n.name: (n.input[0], n.input[1]) for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits}


def intermediates(src: Path, feeds, names: list[str]):
    """Per recorded call, the values of the tensors ``names`` (graph outputs added to a copy)."""
    import onnxruntime as ort

    probe = onnx.load(src)
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in names if n not in have)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    for f in feeds():
        yield sess.run(names, f)


PERCENTILE = 99.99
"""``percentile`` calibration: the static range covers this share of the recorded values (per sign)."""


def static_range(xs: list[np.ndarray], symmetric: bool, method: str = "minmax") -> tuple[float, float]:
    """One (lo, hi) for all recorded calls: their full range (minmax, what ORT's MinMax calibrator
    takes), or the ``PERCENTILE``-th percentile of the pooled values (percentile: clips the rare
    massive activations, so each value counts as often as the deployment schedule produced it;
    computed here because ORT's histogram calibrators need every call to have the same shape).

    >>> xs = [np.arange(100_000.0).reshape(100, 1000) / 100_000, np.array([[-1.0, 50.0]])]
    >>> static_range(xs, False), tuple(round(v, 4) for v in static_range(xs, False, "percentile"))
    ((-1.0, 50.0), (0.0, 0.9999))
    """
    if method == "minmax":
        return min(rng(x, symmetric)[0] for x in xs), max(rng(x, symmetric)[1] for x in xs)
    if method != "percentile":
        raise ValueError(f"unknown calibration method {method!r}")
    pooled = np.concatenate([x.ravel() for x in xs])
    if symmetric:
        m = float(np.percentile(np.abs(pooled), PERCENTILE))
        return -m, m
    lo, hi = np.percentile(pooled, [100 - PERCENTILE, PERCENTILE])
    return min(float(lo), 0.0), max(float(hi), 0.0)


def activation_errors(src: Path, feeds, symmetric: bool, method: str = "minmax"
                      ) -> dict[str, tuple[float, float, tuple[float, float]]]:
    """activation tensor -> (static error, per-call error, static range) over the recorded calls."""
    names = list(dict.fromkeys(a for a, _ in weight_matmuls(onnx.load(src)).values()))
    calls = list(intermediates(src, feeds, names))
    out = {}
    for i, name in enumerate(names):
        xs = [c[i] for c in calls]
        lo, hi = static_range(xs, symmetric, method)
        n = sum(x.size // x.shape[-1] for x in xs)
        static = sum(row_error(x, qdq(x, lo, hi, symmetric)) * (x.size // x.shape[-1]) for x in xs) / n
        per_call = sum(row_error(x, qdq(x, *rng(x, symmetric), symmetric)) * (x.size // x.shape[-1]) for x in xs) / n
        out[name] = (static, per_call, (lo, hi))
    return out


def fallbacks(src: Path, feeds, symmetric: bool, ratio: float = RATIO, method: str = "minmax"
              ) -> tuple[dict[str, str], dict[str, tuple[float, float]]]:
    """(MatMul node name -> why it is left out of static quantization, activation -> static range
    under ``method``). ``ratio`` inf: nothing falls back."""
    errors = activation_errors(src, feeds, symmetric, method)
    model = onnx.load(src)
    out = {}
    for node, (act, weight) in weight_matmuls(model).items():
        static, per_call, _ = errors[act]
        if static > ratio * max(per_call, 1e-6):
            label = weight.removesuffix(".weight_t")
            out[node] = f"{label} (static {100 * static:.1f}% vs per-call {100 * per_call:.1f}% token error)"
    return out, {act: r for act, (_, _, r) in errors.items()}
