"""The graph contract between `skipdecode export` and the runtimes (details: export/README.md).

Every graph takes and returns plain tensors; the runtime owns the KV buffers and decides which
layers run. KV rows are stored *right-padded*: row b's token at position p lives at index p of
its buffers, so a row's valid keys are always ``[0, length_b)`` (what GroupQueryAttention wants).

embed.onnx    input_ids (B, S) int64, positions (B, S) int64 -> hidden (B, S, hidden)
lm_head.onnx  hidden (B, S, hidden), last_index (B,) int64
              -> logits (B, V) float32, next_token (B,) int64, topk_values (B, K) float32,
                 topk_ids (B, K) int64  (all of row b's column last_index[b])
layer_NNN.onnx, target onnxruntime (com.microsoft.GroupQueryAttention, buffers shared in place):
    hidden (B, S, hidden), past_key / past_value (B, H_kv, T, D), seqlens_k (B,) int32 = each
    row's length after this call minus 1, total_sequence_length () int32 = max(seqlens_k) + 1
    -> hidden_out (B, S, hidden), present_key / present_value: the same buffers (bind the same
    OrtValue as input and output), with the S new entries written at [seqlens_k - S + 1, ...].
layer_NNN.onnx, target tensorrt (standard ONNX ops only):
    hidden (B, S, hidden), past_key / past_value (B, H_kv, T_max, D), write_index (B,) int32 =
    row b's valid cached keys (the new tokens go to [write_index, write_index + S)),
    positions (B, S) int64
    -> hidden_out (B, S, hidden), new_key / new_value (B, H_kv, S, D) for the runtime to scatter.
adapter_NNN.onnx (a checkpoint with entry adapters, models/adapters.py; standard ops, fp32 or the
    export's dtype): hidden (B, S, hidden) -> hidden_out (B, S, hidden) = hidden + (hidden V^T) U^T
    (rank r) or hidden + hidden D^T (rank full): run on the rows that enter layer NNN, just before it.
"""

from __future__ import annotations

TARGETS = ("onnxruntime", "tensorrt")
"""What `skipdecode export --target` builds (``both`` writes one folder per target)."""
LAYER_KINDS = ("gqa", "standard")
"""A manifest's ``layer_kind``: the onnxruntime target's GroupQueryAttention layers, or standard ops."""
EMBED, LM_HEAD = "embed", "lm_head"

EMBED_INPUTS = ("input_ids", "positions")
EMBED_OUTPUTS = ("hidden",)
HEAD_INPUTS = ("hidden", "last_index")
HEAD_OUTPUTS = ("logits", "next_token", "topk_values", "topk_ids")
LAYER_INPUTS = {
    "onnxruntime": ("hidden", "past_key", "past_value", "seqlens_k", "total_sequence_length"),
    "tensorrt": ("hidden", "past_key", "past_value", "write_index", "positions"),
}
LAYER_OUTPUTS = {
    "onnxruntime": ("hidden_out", "present_key", "present_value"),
    "tensorrt": ("hidden_out", "new_key", "new_value"),
}
ADAPTER_INPUTS = ("hidden",)
ADAPTER_OUTPUTS = ("hidden_out",)
ADAPTERS_ONNXRUNTIME_ONLY = "entry adapters run on ONNX Runtime only for now"
"""Why the TensorRT target refuses a checkpoint (or export) with entry adapters."""
TOP_K = 64
"""K of lm_head's top-k outputs (sampling with top_k <= K needs only these on the host)."""


def graph_name(layer: int) -> str:
    """The one name of layer ``layer``'s graph, wherever a graph is named (manifest, calibration
    shards, validation report, quantization record); embed and lm_head are EMBED and LM_HEAD.

    >>> graph_name(3), layer_index("layer_003"), layer_index(EMBED)
    ('layer_003', 3, None)
    """
    return f"layer_{layer:03d}"


def adapter_name(layer: int) -> str:
    """The one name of the entry-adapter graph applied just before layer ``layer``.

    >>> adapter_name(3), adapter_index("adapter_003"), adapter_index("layer_003"), layer_index("adapter_003")
    ('adapter_003', 3, None, None)
    """
    return f"adapter_{layer:03d}"


def adapter_index(name: str) -> int | None:
    """The inverse of ``adapter_name``: the layer an adapter graph enters, None for other graphs."""
    return int(name[8:]) if name.startswith("adapter_") and name[8:].isdigit() else None


def layer_index(name: str) -> int | None:
    """The inverse of ``graph_name``: the layer of a graph name, None for embed, lm_head and the
    entry adapters (``adapter_index``)."""
    if name in (EMBED, LM_HEAD) or adapter_index(name) is not None:
        return None
    if not (name.startswith("layer_") and name[6:].isdigit()):
        raise ValueError(f"{name!r} is not a graph name (embed, lm_head, layer_NNN or adapter_NNN)")
    return int(name[6:])


def graph_file(name: str) -> str:
    """The file of graph ``name`` in an export folder."""
    return name + ".onnx"


def layer_file(layer: int) -> str:
    return graph_file(graph_name(layer))
