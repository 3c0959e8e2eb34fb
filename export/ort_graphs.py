"""ONNX Runtime target: decoder-layer graphs written directly from the weights with contrib ops.

Like onnxruntime-genai's model builder, each layer is one ``com.microsoft.GroupQueryAttention``
with ``past_present_share_buffer`` (K/V written in place at each row's own length), fused
``SkipSimplifiedLayerNormalization`` / ``SkipLayerNormalization`` after attention, and a packed
QKV projection. The first norm is written as plain ops (Pow, ReduceMean, ...) that ORT fuses into
``SimplifiedLayerNormalization`` at load, so the file stays valid for ``onnx.checker``.
Why not the dynamo exporter here: see export/README.md ("Why two builders").
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from skipdecode.export.contract import ADAPTER_INPUTS, ADAPTER_OUTPUTS, LAYER_INPUTS, LAYER_OUTPUTS

MS = "com.microsoft"
NP_TO_ONNX = {np.dtype("float32"): TensorProto.FLOAT, np.dtype("float16"): TensorProto.FLOAT16}


class Graph:
    """A few helpers over onnx.helper: initializers from torch tensors, auto-named nodes."""

    def __init__(self, name: str, dtype: np.dtype):
        self.name, self.dtype = name, np.dtype(dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._n = 0

    def weight(self, name: str, t: torch.Tensor | np.ndarray, dtype=None) -> str:
        a = t.detach().float().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        a = a.astype(dtype or (self.dtype if a.dtype.kind == "f" else a.dtype))
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(a), name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, domain: str = "", out=None, **attrs):
        self._n += 1
        name = f"/{op_type}_{self._n}"
        outs = out if out is not None else [f"{name}/out{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, domain=domain or None, **attrs))
        return outs[0] if len(outs) == 1 else outs

    def input(self, name: str, elem: int, shape: list):
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))

    def output(self, name: str, elem: int, shape: list):
        self.outputs.append(helper.make_tensor_value_info(name, elem, shape))

    def model(self, opset: int) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)],
                              producer_name="skipdecode")
        m.ir_version = min(m.ir_version, 10)  # readable by older ORT releases too
        return m

    # ---- composite pieces ---------------------------------------------------------------------
    def linear(self, x: str, lin: torch.nn.Linear, name: str) -> str:
        y = self.op("MatMul", [x, self.weight(f"{name}.weight_t", lin.weight.T)])
        if lin.bias is not None:
            y = self.op("Add", [y, self.weight(f"{name}.bias", lin.bias)])
        return y

    def rms_norm(self, x: str, weight: torch.Tensor, eps: float, name: str) -> str:
        """The pattern ORT's SimplifiedLayerNormFusion matches (computed in fp32 as in PyTorch)."""
        xf = self.op("Cast", [x], to=TensorProto.FLOAT) if self.dtype != np.float32 else x
        two = self.weight(f"{name}.two", np.array(2.0, np.float32), np.float32)
        axes = self.weight(f"{name}.axes", np.array([-1], np.int64))
        ms = self.op("ReduceMean", [self.op("Pow", [xf, two]), axes], keepdims=1)
        eps_ = self.weight(f"{name}.eps", np.array(eps, np.float32), np.float32)
        y = self.op("Div", [xf, self.op("Sqrt", [self.op("Add", [ms, eps_])])])
        if self.dtype != np.float32:
            y = self.op("Cast", [y], to=NP_TO_ONNX[self.dtype])
        return self.op("Mul", [y, self.weight(f"{name}.weight", weight)])


def _io(g: Graph, hidden: int, kv_heads: int, head_dim: int):
    """Declare the layer contract of the onnxruntime target (see export/contract.py)."""
    elem = NP_TO_ONNX[g.dtype]
    g.input("hidden", elem, ["batch", "seq", hidden])
    g.input("past_key", elem, ["batch", kv_heads, "max_seq", head_dim])
    g.input("past_value", elem, ["batch", kv_heads, "max_seq", head_dim])
    g.input("seqlens_k", TensorProto.INT32, ["batch"])
    g.input("total_sequence_length", TensorProto.INT32, [])
    assert [i.name for i in g.inputs] == list(LAYER_INPUTS["onnxruntime"])
    g.output("hidden_out", elem, ["batch", "seq", hidden])
    g.output("present_key", elem, ["batch", kv_heads, "max_seq", head_dim])
    g.output("present_value", elem, ["batch", kv_heads, "max_seq", head_dim])
    assert [o.name for o in g.outputs] == list(LAYER_OUTPUTS["onnxruntime"])


def _qkv_weight(attn) -> tuple[torch.Tensor, torch.Tensor | None]:
    w = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight], 0)  # (q+k+v, hidden)
    has_bias = attn.q_proj.bias is not None
    b = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]) if has_bias else None
    return w, b


def _attention(g: Graph, x: str, attn, num_heads: int, kv_heads: int, rope: tuple | None) -> str:
    w, b = _qkv_weight(attn)
    qkv = g.op("MatMul", [x, g.weight("qkv.weight_t", w.T)])  # (B, S, (H + 2 H_kv) D) packed
    if b is not None:
        qkv = g.op("Add", [qkv, g.weight("qkv.bias", b)])
    cos, sin = ("", "") if rope is None else (g.weight("cos_cache", rope[0]), g.weight("sin_cache", rope[1]))
    out = g.op("GroupQueryAttention",
               [qkv, "", "", "past_key", "past_value", "seqlens_k", "total_sequence_length", cos, sin],
               domain=MS, out=["/attn/out", "present_key", "present_value"],
               num_heads=num_heads, kv_num_heads=kv_heads, scale=float(attn.scale),
               do_rotary=int(rope is not None), rotary_interleaved=0)
    return out[0]  # (B, S, H D)


def llama_layer(layer, config, cos_sin: tuple[np.ndarray, np.ndarray], dtype, opset: int) -> onnx.ModelProto:
    """cos_sin: the RoPE tables (T_max, D/2) GroupQueryAttention indexes by position."""
    g = Graph("llama_layer", dtype)
    _io(g, config.hidden_size, config.num_kv_heads, config.head_dim)
    eps = config.rms_norm_eps
    a = layer.self_attn
    h = g.rms_norm("hidden", layer.input_layernorm.weight, eps, "input_layernorm")
    attn = _attention(g, h, a, a.num_heads, a.num_kv_heads, cos_sin)
    o = g.op("MatMul", [attn, g.weight("o_proj.weight_t", a.o_proj.weight.T)])
    if a.o_proj.bias is not None:
        o = g.op("Add", [o, g.weight("o_proj.bias", a.o_proj.bias)])
    # (normed, mean, inv_std, o + hidden): the residual sum comes out of the fused norm
    h2, _, _, resid = g.op("SkipSimplifiedLayerNormalization",
                           [o, "hidden", g.weight("post_attention_layernorm.weight", layer.post_attention_layernorm.weight)],
                           domain=MS, out=["/post_ln/out", "", "", "/post_ln/resid"], epsilon=eps)
    m = layer.mlp
    gate = g.linear(h2, m.gate_proj, "gate_proj")
    up = g.linear(h2, m.up_proj, "up_proj")
    act = g.op("Mul", [gate, g.op("Sigmoid", [gate])])  # SiLU
    down = g.linear(g.op("Mul", [act, up]), m.down_proj, "down_proj")
    g.op("Add", [down, resid], out=["hidden_out"])
    return g.model(opset)


OPT_ACT = {"relu": ("Relu", ""), "gelu": ("Gelu", MS), "gelu_new": ("FastGelu", MS)}


def _layer_norm(g: Graph, x: str, ln: torch.nn.LayerNorm, name: str) -> str:
    w = ln.weight if ln.weight is not None else torch.ones(ln.normalized_shape)
    b = ln.bias if ln.bias is not None else torch.zeros(ln.normalized_shape)
    return g.op("LayerNormalization", [x, g.weight(f"{name}.weight", w), g.weight(f"{name}.bias", b)],
                axis=-1, epsilon=ln.eps)


def _skip_layer_norm(g: Graph, x: str, skip: str, ln: torch.nn.LayerNorm, name: str, bias=None):
    """-> (LayerNorm(x + skip + bias), x + skip + bias)."""
    w = ln.weight if ln.weight is not None else torch.ones(ln.normalized_shape)
    b = ln.bias if ln.bias is not None else torch.zeros(ln.normalized_shape)
    ins = [x, skip, g.weight(f"{name}.weight", w), g.weight(f"{name}.beta", b)]
    if bias is not None:
        ins.append(g.weight(f"{name}.skip_bias", bias))
    out = g.op("SkipLayerNormalization", ins, domain=MS,
               out=[f"/{name}/out", "", "", f"/{name}/resid"], epsilon=ln.eps)
    return out[0], out[3]


def opt_layer(layer, config, dtype, opset: int) -> onnx.ModelProto:
    g = Graph("opt_layer", dtype)
    _io(g, config.hidden_size, config.num_kv_heads, config.head_dim)
    a = layer.self_attn
    h = _layer_norm(g, "hidden", layer.self_attn_layer_norm, "self_attn_layer_norm") if layer.pre_ln else "hidden"
    attn = _attention(g, h, a, a.num_heads, a.num_heads, None)
    o = g.op("MatMul", [attn, g.weight("out_proj.weight_t", a.out_proj.weight.T)])
    ob = a.out_proj.bias
    if layer.pre_ln:  # h2 = LN(x + o), resid = x + o
        h2, resid = _skip_layer_norm(g, o, "hidden", layer.final_layer_norm, "final_layer_norm", ob)
    else:  # x1 = LN(x + o); the FFN reads x1 unnormalised
        h2, _ = _skip_layer_norm(g, o, "hidden", layer.self_attn_layer_norm, "self_attn_layer_norm", ob)
        resid = h2
    op_type, domain = OPT_ACT[config.activation_function]
    f = g.op(op_type, [g.linear(h2, layer.fc1, "fc1")], domain=domain)
    f = g.op("MatMul", [f, g.weight("fc2.weight_t", layer.fc2.weight.T)])
    if layer.pre_ln:
        if layer.fc2.bias is not None:
            f = g.op("Add", [f, g.weight("fc2.bias", layer.fc2.bias)])
        g.op("Add", [f, resid], out=["hidden_out"])
    else:
        out, _ = _skip_layer_norm(g, f, resid, layer.final_layer_norm, "final_layer_norm", layer.fc2.bias)
        g.op("Identity", [out], out=["hidden_out"])
    return g.model(opset)


def adapter_graph(adapter, hidden_size: int, dtype, opset: int) -> onnx.ModelProto:
    """An entry adapter (models/adapters.py EntryAdapter): hidden + (hidden V^T) U^T, or hidden +
    hidden D^T for rank full, in standard ops (two or one MatMul and an Add)."""
    g = Graph("entry_adapter", dtype)
    (x,), (y,) = ADAPTER_INPUTS, ADAPTER_OUTPUTS
    g.input(x, NP_TO_ONNX[g.dtype], ["batch", "seq", hidden_size])
    g.output(y, NP_TO_ONNX[g.dtype], ["batch", "seq", hidden_size])
    if hasattr(adapter, "delta"):
        delta = g.linear(x, adapter.delta, "delta")  # (B, S, hidden)
    else:
        delta = g.linear(g.linear(x, adapter.down, "down"), adapter.up, "up")  # (B, S, hidden) via (B, S, rank)
    g.op("Add", [x, delta], out=[y])
    return g.model(opset)


def rope_tables(model, max_seq: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin (max_seq, D/2) in fp32, the same values models/llama.py computes per position."""
    pos = torch.arange(max_seq, dtype=torch.float32)
    freqs = pos[:, None] * model.inv_freq.float()[None]  # (T_max, D/2)
    return freqs.cos().numpy(), freqs.sin().numpy()


def layer_graph(model, index: int, max_seq: int, dtype, opset: int, cos_sin=None) -> onnx.ModelProto:
    c = model.config
    layer = model.decoder_layers[index]
    if c.family == "llama":
        return llama_layer(layer, c, cos_sin if cos_sin is not None else rope_tables(model, max_seq), dtype, opset)
    return opt_layer(layer, c, dtype, opset)
