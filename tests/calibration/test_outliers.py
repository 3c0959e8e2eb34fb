"""The static-scale fallback: a layer with a massive activation falls back (the doctests run in
tests/test_doctests.py)."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from skipdecode.calibration import graphs, outliers


def test_a_massive_activation_makes_its_matmul_fall_back(tmp_path):
    """Two projections of one input x: x @ A directly, and (x * gain) @ B where one channel of one
    token is huge (a massive activation); only the second falls back."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), n)
             for n in ("a.weight_t", "b.weight_t")]
    nodes = [helper.make_node("MatMul", ["x", "a.weight_t"], ["ya"], name="ma"),
             helper.make_node("Mul", ["x", "gain"], ["xg"], name="g"),
             helper.make_node("MatMul", ["xg", "b.weight_t"], ["yb"], name="mb")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8]),
                                           helper.make_tensor_value_info("gain", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["n", 4]) for y in ("ya", "yb")],
                              inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "m.onnx")
    calls = []
    for i in range(6):
        gain = np.ones((3, 8), np.float32)
        if i == 0:
            gain[0, 3] = 500.0
        calls.append({"x": rng.normal(size=(3, 8)).astype(np.float32), "gain": gain})
    out, ranges = outliers.fallbacks(tmp_path / "m.onnx", lambda: iter(calls), symmetric=False)
    assert list(out) == ["mb"] and out["mb"].startswith("b (static")
    assert ranges["xg"][1] == pytest.approx(max(float((c["x"] * c["gain"]).max()) for c in calls))

    # a range given by the calibration (percentile) becomes the activation's Q/DQ scale
    graphs.int8_static(tmp_path / "m.onnx", tmp_path / "q.onnx", lambda: iter(calls), per_channel=False,
                       symmetric_activations=False, ranges={"xg": (-1.0, 3.0)})
    q = onnx.load(tmp_path / "q.onnx")
    scale = next(n.input[1] for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "xg")
    value = next(numpy_helper.to_array(i) for i in q.graph.initializer if i.name == scale)
    assert float(value) == pytest.approx(4.0 / 255, rel=1e-6)
