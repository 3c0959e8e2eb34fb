"""SmoothQuant (Xiao et al., 2023) on a layer graph, before static int8 calibration.

A static activation scale has to cover the few massive channels of an LLM (SmolLM2's late
``down_proj`` inputs reach ~2400 where the median is ~0.2), which rounds every ordinary channel
to a couple of levels. SmoothQuant moves that range into the weights, exactly:
``x @ W == (x / s) @ (diag(s) W)``, with one ``s_j = max|x_j|^alpha / max|W_j|^(1 - alpha)`` per
input channel. ``1 / s`` is folded into whatever produces ``x``, so the graph gains no op:

- a norm's scale (``Mul`` by a weight vector, (Skip)(Simplified)LayerNormalization's gamma and beta):
  the inputs of QKV, of gate/up (Llama) and of fc1 (OPT, pre-LN);
- the columns of the projection multiplied in: ``act(gate) * up`` feeds ``down_proj``, so ``up``'s
  output channels take ``1 / s``.

Inputs whose producer is nonlinear (``o_proj`` after attention, OPT's ``fc2`` after ReLU/GELU) or
is read by anything but the projections are left alone. ``max|x_j|`` comes from the recorded
calibration calls: under the deployment schedule, the channels the skipped steps really light up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from skipdecode.calibration.outliers import intermediates, weight_matmuls

NORM_GAMMA = {"LayerNormalization": (1, 2), "SimplifiedLayerNormalization": (1,),
              "SkipLayerNormalization": (2, 3), "SkipSimplifiedLayerNormalization": (2,)}
"""Norm op -> inputs that scale its normalised output (gamma, and beta where there is one)."""


@dataclass
class Site:
    activation: str
    """The tensor every consumer of which is a constant-weight MatMul."""
    weights: list[str]
    """Their weight initializers (in, out): rows take ``s``."""
    fold_vectors: list[str]
    """Initializers of shape (C,) that take ``1 / s`` (norm gamma/beta)."""
    fold_columns: list[str]
    """Initializers whose last axis is the channel axis of ``activation`` (an ``up`` weight (in, C)
    and its bias (C,)) that take ``1 / s``."""


def scales(act_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    """Per input channel ``s_j = max|x_j|^alpha / max|W_j|^(1 - alpha)``, in [1e-5, 1e5]; a channel
    never active (or with zero weights) keeps ``s = 1``.

    >>> scales(np.array([4.0, 1.0, 0.0]), np.array([1.0, 1.0, 2.0]), 0.5).tolist()
    [2.0, 1.0, 1.0]
    """
    live = (act_max > 0) & (weight_max > 0)
    s = np.power(np.where(live, act_max, 1.0), alpha) / np.power(np.where(live, weight_max, 1.0), 1 - alpha)
    return np.where(live, np.clip(s, 1e-5, 1e5), 1.0)


def sites(model: onnx.ModelProto) -> list[Site]:
    """Every projection input whose producer can take ``1 / s`` exactly."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    producer = {o: n for n in g.node for o in n.output if o}
    outputs = {o.name for o in g.output}
    uses = lambda name: len(consumers.get(name, []))  # noqa: E731
    const_mm = {n.name for n in g.node if n.op_type == "MatMul" and n.input[1] in inits}
    found = []
    for act in dict.fromkeys(a for a, _ in weight_matmuls(model).values()):
        readers = consumers.get(act, [])
        if act in outputs or act not in producer or any(r.name not in const_mm or r.input[0] != act for r in readers):
            continue
        weights = [r.input[1] for r in readers]
        if len(set(weights)) != len(weights) or any(uses(w) != 1 for w in weights):
            continue
        channels = _dims(inits[weights[0]])[0]
        p = producer[act]
        vectors, columns = [], []
        if p.op_type in NORM_GAMMA and p.output[0] == act:
            vectors = [p.input[i] for i in NORM_GAMMA[p.op_type] if i < len(p.input) and p.input[i]]
        elif p.op_type == "Mul":
            vec = [x for x in p.input if x in inits and _dims(inits[x]) == [channels]]
            if len(vec) == 1 and len(p.input) == 2:
                vectors = vec
            else:
                columns = _up_columns(p, producer, inits, uses, const_mm, channels)
        if not (vectors or columns):
            continue
        if any(x not in inits or uses(x) != 1 or _dims(inits[x])[-1] != channels for x in vectors + columns):
            continue
        found.append(Site(act, weights, vectors, columns))
    return found


def _dims(init: onnx.TensorProto) -> list[int]:
    return list(init.dims)


def _up_columns(mul, producer, inits, uses, const_mm, channels) -> list[str]:
    """``a * up`` where ``up`` = x @ W_up (+ bias) is read by this Mul only: W_up's columns (and the bias)."""
    for x in mul.input:
        p = producer.get(x)
        if p is None or uses(x) != 1:
            continue
        bias = []
        if p.op_type == "Add" and len(p.input) == 2:
            b = [i for i in p.input if i in inits]
            y = [i for i in p.input if i not in inits]
            if len(b) != 1 or len(y) != 1 or uses(y[0]) != 1 or y[0] not in producer:
                continue
            bias, p = b, producer[y[0]]
        if p.name in const_mm and _dims(inits[p.input[1]])[-1] == channels:
            return [p.input[1], *bias]
    return []


def weight_max(site: Site, weights: dict[str, np.ndarray]) -> np.ndarray:
    """max |W_j| per input channel (C,) over every projection reading ``site``'s activation."""
    return np.max([np.abs(weights[w]).max(axis=1) for w in site.weights], axis=0)


def channel_max(src: Path, feeds, names: list[str]) -> dict[str, np.ndarray]:
    """activation -> max |x_j| over every token of every recorded call, per channel (C,)."""
    out: dict[str, np.ndarray] = {}
    for values in intermediates(src, feeds, names):
        for name, x in zip(names, values):
            m = np.abs(x.reshape(-1, x.shape[-1])).max(axis=0)
            out[name] = m if name not in out else np.maximum(out[name], m)
    return out


def smooth(src: Path, dst: Path, feeds, alpha: float) -> dict[str, tuple[float, float]]:
    """Write the smoothed graph to ``dst`` (same function in exact arithmetic); returns, per
    smoothed activation, its largest channel maximum before / after (the range static int8 must
    cover shrinks by that ratio)."""
    model = onnx.load(src)
    found = sites(model)
    if not found:
        onnx.save(model, dst)
        return {}
    amax = channel_max(src, feeds, [s.activation for s in found])
    inits = {i.name: i for i in model.graph.initializer}
    arr = lambda n: numpy_helper.to_array(inits[n]).astype(np.float64)  # noqa: E731
    report = {}
    for site in found:
        a = amax[site.activation]
        s = scales(a, weight_max(site, {w: arr(w) for w in site.weights}), alpha)
        for w in site.weights:
            _set(inits[w], arr(w) * s[:, None])
        for v in site.fold_vectors:
            _set(inits[v], arr(v) / s)
        for c in site.fold_columns:
            _set(inits[c], arr(c) / s)
        report[site.activation] = (float(a.max()), float((a / s).max()))
    onnx.save(model, dst)
    return report


def _set(init: onnx.TensorProto, value: np.ndarray) -> None:
    dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
    init.CopyFrom(numpy_helper.from_array(value.astype(dtype), init.name))
