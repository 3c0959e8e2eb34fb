"""Graphs exported from the PyTorch reference with ``torch.onnx.export(dynamo=True)``.

Standard ONNX ops only, so they serve both targets: embed, lm_head, and the TensorRT target's
decoder layers. Each wrapper reuses the model's own modules (``model.embed``,
``decoder_layers[i]``, ``model.head``), so the graphs compute exactly what the reference does.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import onnx
import torch
import torch.nn as nn

from skipdecode.export.contract import (EMBED_INPUTS, EMBED_OUTPUTS, HEAD_INPUTS, HEAD_OUTPUTS, LAYER_INPUTS,
                                        LAYER_OUTPUTS)


class Embed(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, positions):  # (B, S) int64 each
        return self.model.embed(input_ids, positions)  # (B, S, hidden)


class LMHead(nn.Module):
    """Final norm and projection of each row's column ``last_index``, plus greedy and top-k."""

    def __init__(self, model, top_k: int):
        super().__init__()
        self.model = model
        self.top_k = top_k

    def forward(self, hidden, last_index):  # (B, S, hidden), (B,) int64
        B, _, H = hidden.shape
        h = hidden.gather(1, last_index.view(B, 1, 1).expand(B, 1, H))  # (B, 1, hidden)
        logits = self.model.head(h)[:, 0].float()  # (B, V)
        values, ids = logits.topk(self.top_k, dim=-1)  # (B, K)
        return logits, logits.argmax(-1), values, ids


class StandardLayer(nn.Module):
    """A decoder layer over an external KV buffer, with the mask built in-graph (TensorRT target).

    Attends over [past buffer (T_max) | the S new tokens]: buffer index j is a key iff
    j < write_index[b]; new token i' is a key of new token i iff i' <= i. The new K/V go out for
    the runtime to scatter at [write_index, write_index + S); nothing is concatenated on the host.
    """

    def __init__(self, model, index: int):
        super().__init__()
        self.model = model
        self.layer = model.decoder_layers[index]

    def forward(self, hidden, past_key, past_value, write_index, positions):
        B, S, _ = hidden.shape
        T = past_key.shape[2]
        j = torch.arange(T, device=hidden.device)
        past_ok = (j[None, :] < write_index[:, None].long())[:, None, :].expand(B, S, T)  # (B, S, T_max)
        i = torch.arange(S, device=hidden.device)
        new_ok = (i[None, :] <= i[:, None])[None].expand(B, S, S)  # (B, S, S)
        mask = torch.cat([past_ok, new_ok], -1)[:, None]  # (B, 1, S, T_max + S)
        rope = self.model.rope(positions)
        new = {}

        def kv_fn(k, v):  # (B, H_kv, S, D)
            new["k"], new["v"] = k, v
            return torch.cat([past_key, k], 2), torch.cat([past_value, v], 2)

        out = self.layer(hidden, rope, mask, kv_fn)
        return out, new["k"], new["v"]


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress and registration warnings; keep stdout/stderr for ours."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _export(module, args, input_names, output_names, dynamic, opset: int, optimize: bool = True) -> onnx.ModelProto:
    with _quiet(), torch.no_grad():
        prog = torch.onnx.export(module, args, input_names=list(input_names), output_names=list(output_names),
                                 dynamic_shapes=dynamic, opset_version=opset, dynamo=True,
                                 optimize=optimize, verbose=False)
    return prog.model_proto


def _dims():
    B = torch.export.Dim("batch", min=1, max=4096)
    S = torch.export.Dim("seq", min=1, max=65536)
    return B, S


def export_embed(model, opset: int) -> onnx.ModelProto:
    B, S = _dims()
    ids = torch.zeros(2, 3, dtype=torch.long)
    return _export(Embed(model), (ids, ids.clone()), EMBED_INPUTS, EMBED_OUTPUTS,
                   ({0: B, 1: S}, {0: B, 1: S}), opset)


def export_lm_head(model, top_k: int, opset: int) -> onnx.ModelProto:
    B, S = _dims()
    p = next(model.parameters())
    hidden = torch.zeros(2, 3, model.config.hidden_size, dtype=p.dtype)
    last = torch.tensor([2, 1])
    return _export(LMHead(model, top_k), (hidden, last), HEAD_INPUTS, HEAD_OUTPUTS,
                   ({0: B, 1: S}, {0: B}), opset)


def export_standard_layer(model, index: int, max_seq: int, opset: int, optimize: bool = True) -> onnx.ModelProto:
    B, S = _dims()
    c = model.config
    p = next(model.parameters())
    hidden = torch.zeros(2, 3, c.hidden_size, dtype=p.dtype)
    kv = torch.zeros(2, c.num_kv_heads, max_seq, c.head_dim, dtype=p.dtype)
    write = torch.tensor([1, 0], dtype=torch.int32)
    pos = torch.arange(3)[None].repeat(2, 1)
    return _export(StandardLayer(model, index), (hidden, kv, kv.clone(), write, pos),
                   LAYER_INPUTS["tensorrt"], LAYER_OUTPUTS["tensorrt"],
                   ({0: B, 1: S}, {0: B}, {0: B}, {0: B}, {0: B, 1: S}), opset, optimize)
