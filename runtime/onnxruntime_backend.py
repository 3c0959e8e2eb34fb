"""ONNX Runtime backend: chains embed, the scheduled layer graphs and lm_head of a per-layer export.

numpy + onnxruntime only (no torch, no transformers). The backend owns one K and one V buffer
``(R, H_kv, T, D)`` per layer, numpy arrays wrapped by OrtValues that share their memory and
bound with IOBinding. Row r's position p lives at index p (runtime/feeds.py).

Every call runs a contiguous range of rows: the range's slice of each buffer (KV, hidden states,
seqlens) is a numpy view, wrapped without a copy and bound; bindings are cached per (layer, range).
Rows outside a layer's range keep their hidden state: the two hidden buffers ping-pong, and those
rows are copied across (a few KB a step).

- ``layer_kind == "gqa"`` (onnxruntime target): GroupQueryAttention writes the new K/V in place
  (the same OrtValue is bound as ``past_key`` and ``present_key``).
- ``layer_kind == "standard"`` (tensorrt target, or heads ORT's GQA cannot take): the graph
  returns ``new_key``/``new_value`` for the new tokens, scattered here at ``write_index``.

Decode steps run a layer's decode graph where the export has one (``--split-phases``).

Entry adapters (an export of a checkpoint that has them: ``adapter_NNN.onnx``) run as the PyTorch
reference applies them: on the hidden states of the rows that run layer l but not l - 1, just
before layer l (a prefill's ``entries(layers)``; a decode step's rows of ``ranges[l]`` outside
``ranges[l - 1]``). In decode their output goes to a scratch buffer and is copied back over those
rows of the layer's input (a few KB).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from skipdecode.errors import SkipDecodeError
from skipdecode.export.contract import ADAPTER_INPUTS, ADAPTER_OUTPUTS, EMBED, LM_HEAD, graph_name
from skipdecode.runtime.backend import Range, entering_rows
from skipdecode.runtime.feeds import Feeds, KVLengths, check_capacity, decode_feeds, prefill_feeds
from skipdecode.runtime.manifest import load_manifest
from skipdecode.schedule import entries, uncovered_entry

KV_ROUND = 64  # KV capacity is rounded up to a multiple of this
MAX_CACHED_BINDINGS = 8192


def session_options(threads: int | None = None, spinning: bool = False) -> ort.SessionOptions:
    """Many small sessions run in series: spinning thread pools would fight each other."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads or os.cpu_count() or 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.log_severity_level = 3
    return so


def _ov(a: np.ndarray) -> ort.OrtValue:
    return ort.OrtValue.ortvalue_from_numpy(a)  # shares the numpy memory on CPU (a contiguous view)


def saturating_int8(quantization: dict | None) -> bool:
    """Whether an export's int8 MatMul weights use the full 8 bits (no ``reduce_range``; exports
    older than the record had none) while this CPU's ONNX Runtime U8S8 kernels saturate."""
    from skipdecode.cpu import int8_saturates

    q = quantization or {}
    return (q.get("method", "").startswith("int8") and q.get("target") == "onnxruntime"
            and not q.get("reduced_weights", False) and int8_saturates())


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, export_dir: str | Path, providers: Sequence[str] | None = None,
                 threads: int | None = None, spinning: bool = False, verify: bool = True,
                 options: ort.SessionOptions | None = None):
        self.dir = Path(export_dir)
        self.manifest = m = load_manifest(self.dir, verify=verify)
        self.kind = m.layer_kind
        self.num_layers = m.num_layers
        self.max_positions = min(m.max_seq, m.max_positions)
        self.dtype = np.dtype(m.dtype)
        self.kv_heads, self.head_dim, self.hidden_size = m.num_kv_heads, m.head_dim, m.hidden_size
        self.providers = list(providers or ["CPUExecutionProvider"])
        if saturating_int8(m.quantization) and self.providers[0] == "CPUExecutionProvider":
            print(f"skipdecode: warning: {self.dir} has full 8-bit int8 weights, and this CPU (x86 without VNNI) "
                  "adds their products in 16 bits, which saturates: expect wrong outputs; re-run `skipdecode "
                  "calibrate --reduce-range on`", file=sys.stderr)
        so = options or session_options(threads, spinning)
        make = lambda e: ort.InferenceSession(str(self.dir / e.file), so, providers=self.providers)  # noqa: E731
        g = m.graphs
        try:
            self.embed = make(g.embed)
            self.layer_sessions = [make(e) for e in g.layers]
            # decode steps run a layer's decode graph where the export has one (same contract)
            self.decode_sessions = [make(e.decode) if e.decode else s for e, s in zip(g.layers, self.layer_sessions)]
            self.head = make(g.lm_head)
            self.adapters = {l: make(e) for l, e in m.adapter_graphs().items()}
        except Exception as e:  # ORT raises its own exception types for unreadable graphs
            raise SkipDecodeError(f"{self.dir}: cannot load the export ({str(e).splitlines()[0]})") from None
        self.rows = 0
        self.capacity = 0
        self.calls: list[tuple] = []
        """("prefill", (start, stop), layers) / ("decode", ranges) / ("move", ...) of every call."""
        self.capture = None
        """Optional ``capture(graph, feeds)``, called before each graph runs with the arrays bound
        as its inputs (graph: its name in export/contract.py); the arrays are the live
        buffers, so copy what you keep. Calibration (skipdecode.calibration) records with it.
        Entry adapters are not captured (calibration carries them unquantized); a layer's capture
        shows its input after the adapter."""

    # ---- buffers ------------------------------------------------------------------------------
    def allocate(self, rows: int, max_len: int) -> None:
        if max_len > self.max_positions:
            raise SkipDecodeError(f"{max_len} positions needed, the export's KV buffers hold {self.max_positions} "
                                  "(re-export with a larger --max-seq)")
        cap = self.manifest.max_seq if self.kind == "standard" else min(
            -(-max_len // KV_ROUND) * KV_ROUND, self.manifest.max_seq)
        self.calls = []
        self.kv_lengths = KVLengths(self.num_layers, rows)
        R, H, D = rows, self.kv_heads, self.head_dim
        self.rows, self.capacity = R, cap
        self.k = [np.zeros((R, H, cap, D), self.dtype) for _ in range(self.num_layers)]  # (R, H_kv, T, D)
        self.v = [np.zeros((R, H, cap, D), self.dtype) for _ in range(self.num_layers)]
        # decode scratch, one row per KV row; calls bind views [a, b) of these
        self.ids = np.zeros((R, 1), np.int64)
        self.pos = np.zeros((R, 1), np.int64)
        self.last = np.zeros(R, np.int64)
        self.hid = [np.zeros((R, 1, self.hidden_size), self.dtype) for _ in range(2)]
        self.entered = np.zeros((R, 1, self.hidden_size), self.dtype)  # entry adapters' decode output
        self.seqlens = np.zeros(R, np.int32)
        self.total = np.zeros((), np.int32)
        self.write_index = np.zeros(R, np.int32)
        self.nk = np.zeros((R, H, 1, D), self.dtype)
        self.nv = np.zeros_like(self.nk)
        V, K = self.manifest.vocab_size, self.manifest.top_k
        self.out = {"logits": np.zeros((R, V), np.float32), "next_token": np.zeros(R, np.int64),
                    "topk_values": np.zeros((R, K), np.float32), "topk_ids": np.zeros((R, K), np.int64)}
        self._bindings: dict[tuple, ort.IOBinding] = {}

    # ---- bindings -----------------------------------------------------------------------------
    def _bind_embed(self, ids, pos, hidden) -> ort.IOBinding:
        b = self.embed.io_binding()
        b.bind_ortvalue_input("input_ids", _ov(ids))
        b.bind_ortvalue_input("positions", _ov(pos))
        b.bind_ortvalue_output("hidden", _ov(hidden))
        return b

    def _bind_head(self, hidden, last, out: dict[str, np.ndarray]) -> ort.IOBinding:
        b = self.head.io_binding()
        b.bind_ortvalue_input("hidden", _ov(hidden))
        b.bind_ortvalue_input("last_index", _ov(last))
        for n, a in out.items():
            b.bind_ortvalue_output(n, _ov(a))
        return b

    def _bind_layer(self, session, l: int, rows: slice, src, dst, pos, small: dict, new_kv) -> ort.IOBinding:
        """Layer l over KV ``rows``: hidden src -> dst (already sliced), small: seqlens/total or
        write_index views; new_kv: (new_key, new_value) outputs of standard graphs."""
        b = session.io_binding()
        k, v = _ov(self.k[l][rows]), _ov(self.v[l][rows])
        b.bind_ortvalue_input("hidden", _ov(src))
        b.bind_ortvalue_input("past_key", k)
        b.bind_ortvalue_input("past_value", v)
        b.bind_ortvalue_output("hidden_out", _ov(dst))
        if self.kind == "gqa":
            b.bind_ortvalue_input("seqlens_k", _ov(small["seqlens_k"]))
            b.bind_ortvalue_input("total_sequence_length", _ov(small["total_sequence_length"]))
            b.bind_ortvalue_output("present_key", k)  # in place: past and present share memory
            b.bind_ortvalue_output("present_value", v)
        else:
            b.bind_ortvalue_input("write_index", _ov(small["write_index"]))
            b.bind_ortvalue_input("positions", _ov(pos))
            b.bind_ortvalue_output("new_key", _ov(new_kv[0]))
            b.bind_ortvalue_output("new_value", _ov(new_kv[1]))
        return b

    def _adapter(self, l: int) -> ort.InferenceSession:
        """Layer l's entry adapter; a layer the call enters without one is refused as the reference does."""
        if l not in self.adapters:
            raise uncovered_entry(l, self.manifest.entry_adapter["layers"])
        return self.adapters[l]

    def _bind_adapter(self, session, src, dst) -> ort.IOBinding:
        b = session.io_binding()
        b.bind_ortvalue_input(ADAPTER_INPUTS[0], _ov(src))
        b.bind_ortvalue_output(ADAPTER_OUTPUTS[0], _ov(dst))
        return b

    def _cached(self, key: tuple, make):
        b = self._bindings.get(key)
        if b is None:
            if len(self._bindings) >= MAX_CACHED_BINDINGS:
                self._bindings.clear()
            b = self._bindings[key] = make()
        return b

    # ---- calls --------------------------------------------------------------------------------
    def prefill(self, start: int, ids: np.ndarray, lengths: np.ndarray, layers: Sequence[int]) -> np.ndarray:
        n, S = ids.shape
        stop = start + n
        if stop > self.rows:
            raise SkipDecodeError(f"rows [{start}, {stop}) outside the {self.rows} allocated (call allocate first)")
        check_capacity(S, self.capacity)
        layers = tuple(layers)
        self.calls.append(("prefill", (start, stop), layers))
        f = prefill_feeds(lengths, S)
        ids = np.ascontiguousarray(ids, np.int64)
        pos = np.ascontiguousarray(f.positions)
        hid = [np.zeros((n, S, self.hidden_size), self.dtype) for _ in range(2)]
        small = {"seqlens_k": f.seqlens_k.copy(), "total_sequence_length": np.array(f.total_sequence_length, np.int32),
                 "write_index": f.write_index.copy()}
        nk = np.zeros((n, self.kv_heads, S, self.head_dim), self.dtype)
        new_kv = (nk, np.zeros_like(nk))  # (n, H_kv, S, D): standard graphs' new K/V
        rows = slice(start, stop)
        self.kv_lengths.prefill(start, lengths, layers)
        if self.capture is not None:
            self.capture(EMBED, {"input_ids": ids, "positions": pos})
        self.embed.run_with_iobinding(self._bind_embed(ids, pos, hid[0]))
        p = 0
        entering = entries(layers) if self.manifest.entry_adapter is not None else ()
        for l in layers:
            if l in entering:  # every row enters l: the adapter maps the whole buffer across
                adapter = self._adapter(l)
                adapter.run_with_iobinding(self._bind_adapter(adapter, hid[p], hid[1 - p]))
                p = 1 - p
            b = self._bind_layer(self.layer_sessions[l], l, rows, hid[p], hid[1 - p], pos, small, new_kv)
            if self.capture is not None:
                self.capture(graph_name(l), self._layer_feeds(l, rows, hid[p], pos, small))
            self.layer_sessions[l].run_with_iobinding(b)
            if self.kind == "standard":
                self.k[l][rows, :, :S], self.v[l][rows, :, :S] = new_kv
            p = 1 - p
        last = np.ascontiguousarray(f.last)
        out = {k: np.zeros((n, *a.shape[1:]), a.dtype) for k, a in self.out.items()}
        if self.capture is not None:
            self.capture(LM_HEAD, {"hidden": hid[p], "last_index": last})
        self.head.run_with_iobinding(self._bind_head(hid[p], last, out))
        return out["logits"]  # (n, V)

    def decode(self, ids: np.ndarray, positions: np.ndarray, ranges: Sequence[Range]) -> np.ndarray:
        B = len(ids)
        if B > self.rows:
            raise SkipDecodeError(f"{B} rows, {self.rows} allocated (call allocate first)")
        self.calls.append(("decode", [tuple(r) for r in ranges]))
        f: Feeds = decode_feeds(positions)
        check_capacity(f.total_sequence_length, self.capacity)
        self.ids[:B, 0], self.pos[:B, 0] = ids, positions
        self.seqlens[:B], self.write_index[:B] = f.seqlens_k, f.write_index
        if self.capture is not None:
            self.capture(EMBED, {"input_ids": self.ids[:B], "positions": self.pos[:B]})
        emb = self._cached(("embed", B), lambda: self._bind_embed(self.ids[:B], self.pos[:B], self.hid[0][:B]))
        self.embed.run_with_iobinding(emb)
        p = 0
        for l, (a, b) in enumerate(ranges):
            if a == b:
                continue
            self.kv_lengths.check(l, a, b, positions[a:b])
            src, dst = self.hid[p], self.hid[1 - p]
            dst[:a], dst[b:B] = src[:a], src[b:B]  # rows that skip this layer keep their hidden state
            self.total[...] = int(positions[a:b].max()) + 1
            rows = slice(a, b)
            if l > 0 and self.manifest.entry_adapter is not None:
                for lo, hi in entering_rows((a, b), ranges[l - 1]):
                    adapter = self._adapter(l)
                    run = self._cached(("adapter", l, lo, hi, p), lambda: self._bind_adapter(
                        adapter, src[lo:hi], self.entered[lo:hi]))
                    adapter.run_with_iobinding(run)
                    src[lo:hi] = self.entered[lo:hi]  # the layer's input: those rows mapped
            session = self.decode_sessions[l]
            small = {"seqlens_k": self.seqlens[rows], "total_sequence_length": self.total,
                     "write_index": self.write_index[rows]}
            binding = self._cached((l, a, b, p), lambda: self._bind_layer(
                session, l, rows, src[rows], dst[rows], self.pos[rows], small, (self.nk[rows], self.nv[rows])))
            if self.capture is not None:
                self.capture(graph_name(l), self._layer_feeds(l, rows, src[rows], self.pos[rows], small))
            session.run_with_iobinding(binding)
            if self.kind == "standard":
                r = np.arange(a, b)
                self.k[l][r, :, positions[a:b]] = self.nk[rows, :, 0]
                self.v[l][r, :, positions[a:b]] = self.nv[rows, :, 0]
            self.kv_lengths.advance(l, a, b)
            p = 1 - p
        if self.capture is not None:
            self.capture(LM_HEAD, {"hidden": self.hid[p][:B], "last_index": self.last[:B]})
        out = {k: a[:B] for k, a in self.out.items()}
        head = self._cached(("head", B, p), lambda: self._bind_head(self.hid[p][:B], self.last[:B], out))
        self.head.run_with_iobinding(head)
        return self.out["logits"][:B].copy()  # (B, V)

    def move(self, src: Sequence[int], dst: Sequence[int], length: int, layers: Sequence[int]) -> None:
        self.calls.append(("move", list(src), list(dst), length, tuple(layers)))
        src, dst = list(src), list(dst)
        self.kv_lengths.move(src, dst, layers)
        for l in layers:
            self.k[l][dst, :, :length] = self.k[l][src, :, :length]  # fancy indexing: sources read first
            self.v[l][dst, :, :length] = self.v[l][src, :, :length]

    def _layer_feeds(self, l: int, rows: slice, hidden, pos, small) -> dict[str, np.ndarray]:
        """The arrays bound as layer l's inputs, by input name."""
        feeds = {"hidden": hidden, "past_key": self.k[l][rows], "past_value": self.v[l][rows]}
        if self.kind == "gqa":
            return {**feeds, "seqlens_k": small["seqlens_k"], "total_sequence_length": small["total_sequence_length"]}
        return {**feeds, "write_index": small["write_index"], "positions": pos}
