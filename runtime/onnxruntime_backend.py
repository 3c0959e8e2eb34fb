"""ONNX Runtime backend: chains embed, the scheduled layer graphs and lm_head of a per-layer export.

numpy + onnxruntime only (no torch, no transformers). The backend owns one K and one V buffer
``(B, H_kv, T, D)`` per layer, created once per batch shape as numpy arrays wrapped by OrtValues
that share their memory, and bound with IOBinding. Rows are stored right-padded (row b's
position p at index p, see export/README.md), so the left-padded prefill of the generation loop
is re-aligned here, and each row's length is tracked by the backend.

- ``layer_kind == "gqa"`` (onnxruntime target): GroupQueryAttention writes the new K/V in place
  (the same OrtValue is bound as ``past_key`` and ``present_key``); per step the backend only
  updates ``seqlens_k`` / ``total_sequence_length`` in place.
- ``layer_kind == "standard"`` (tensorrt target, or heads ORT's GQA cannot take): the graph
  returns ``new_key``/``new_value`` for the S new tokens, scattered here at ``write_index``.

Hidden states ping-pong between two preallocated buffers; each layer has a binding for either
direction, made once per batch shape for decode (S = 1) and once per prefill.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from skipdecode.errors import SkipDecodeError
from skipdecode.export.contract import graph_name
from skipdecode.runtime.layout import begin_step
from skipdecode.runtime.manifest import load_manifest

KV_ROUND = 64  # KV capacity is rounded up so batches of similar length reuse the buffers


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
        so = options or session_options(threads, spinning)
        make = lambda e: ort.InferenceSession(str(self.dir / e.file), so, providers=self.providers)  # noqa: E731
        g = m.graphs
        try:
            self.embed = make(g.embed)
            self.layers = [make(e) for e in g.layers]
            # decode steps run a layer's decode graph where the export has one (same contract)
            self.decode_layers = [make(e.decode) if e.decode else s for e, s in zip(g.layers, self.layers)]
            self.head = make(g.lm_head)
        except Exception as e:  # ORT raises its own exception types for unreadable graphs
            raise SkipDecodeError(f"{self.dir}: cannot load the export ({str(e).splitlines()[0]})") from None
        self.batch = 0
        self.capacity = 0
        self.layer_calls: list[tuple[int, tuple[int, ...]]] = []
        """(slot, layers) of every forward, for tests that count layer calls."""
        self.capture = None
        """Optional ``capture(graph, feeds)``, called before each graph runs with the arrays bound
        as its inputs (graph: its name, export/contract.py graph_name); the arrays are the live
        buffers, so copy what you keep. Calibration (skipdecode.calibration) records with it."""

    # ---- buffers ------------------------------------------------------------------------------
    def _ov(self, a: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(a)  # shares the numpy memory on CPU

    def allocate(self, batch_size: int, max_len: int) -> None:
        if max_len > self.max_positions:
            raise SkipDecodeError(f"{max_len} positions needed, the export's KV buffers hold {self.max_positions} "
                                  "(re-export with a larger --max-seq)")
        cap = self.manifest.max_seq if self.kind == "standard" else min(
            -(-max_len // KV_ROUND) * KV_ROUND, self.manifest.max_seq)
        self.layer_len = [0] * self.num_layers
        self.layer_calls.clear()
        if batch_size == self.batch and cap <= self.capacity:
            return
        B, H, D = batch_size, self.kv_heads, self.head_dim
        self.batch, self.capacity = B, cap
        shape = (B, H, cap, D)  # (B, H_kv, T, D)
        self.k = [np.zeros(shape, self.dtype) for _ in range(self.num_layers)]
        self.v = [np.zeros(shape, self.dtype) for _ in range(self.num_layers)]
        self.k_ov = [self._ov(a) for a in self.k]
        self.v_ov = [self._ov(a) for a in self.v]
        # per-step scalars, mutated in place (the OrtValues see the change)
        self.seqlens = np.zeros(B, np.int32)
        self.total = np.zeros((), np.int32)
        self.write_index = np.zeros(B, np.int32)
        self.lengths = np.zeros(B, np.int64)
        self.small = {n: self._ov(getattr(self, n)) for n in ("seqlens", "total", "write_index")}
        V, K = self.manifest.vocab_size, self.manifest.top_k
        self.out = {"logits": np.zeros((B, V), np.float32), "next_token": np.zeros(B, np.int64),
                    "topk_values": np.zeros((B, K), np.float32), "topk_ids": np.zeros((B, K), np.int64)}
        self.out_ov = {n: self._ov(a) for n, a in self.out.items()}
        self.decode = self._bindings(1, self.decode_layers)

    def _bindings(self, S: int, sessions: list | None = None) -> dict:
        """Buffers and IOBindings for S new tokens per row (decode: S = 1, made once per batch),
        bound to ``sessions`` (default: the main layer graphs)."""
        B = self.batch
        st = {
            "ids": np.zeros((B, S), np.int64), "pos": np.zeros((B, S), np.int64),
            "last": np.zeros(B, np.int64),
            "hid": [np.zeros((B, S, self.hidden_size), self.dtype) for _ in range(2)],
        }
        if self.kind == "standard":
            st["nk"] = np.zeros((B, self.kv_heads, S, self.head_dim), self.dtype)
            st["nv"] = np.zeros_like(st["nk"])
        ov = {n: self._ov(st[n]) for n in ("ids", "pos", "last")}
        hid = [self._ov(h) for h in st["hid"]]
        eb = self.embed.io_binding()
        eb.bind_ortvalue_input("input_ids", ov["ids"])
        eb.bind_ortvalue_input("positions", ov["pos"])
        eb.bind_ortvalue_output("hidden", hid[0])
        st["embed"] = eb
        st["sessions"] = sessions or self.layers
        st["layers"] = [[self._layer_binding(st["sessions"][l], l, hid[p], hid[1 - p], ov["pos"], st) for p in (0, 1)]
                        for l in range(self.num_layers)]
        heads = []
        for p in (0, 1):
            hb = self.head.io_binding()
            hb.bind_ortvalue_input("hidden", hid[p])
            hb.bind_ortvalue_input("last_index", ov["last"])
            for n, o in self.out_ov.items():
                hb.bind_ortvalue_output(n, o)
            heads.append(hb)
        st["head"] = heads
        return st

    def _layer_binding(self, session, l: int, src, dst, pos, st):
        b = session.io_binding()
        b.bind_ortvalue_input("hidden", src)
        b.bind_ortvalue_input("past_key", self.k_ov[l])
        b.bind_ortvalue_input("past_value", self.v_ov[l])
        b.bind_ortvalue_output("hidden_out", dst)
        if self.kind == "gqa":
            b.bind_ortvalue_input("seqlens_k", self.small["seqlens"])
            b.bind_ortvalue_input("total_sequence_length", self.small["total"])
            b.bind_ortvalue_output("present_key", self.k_ov[l])  # in place: past and present share memory
            b.bind_ortvalue_output("present_value", self.v_ov[l])
        else:
            b.bind_ortvalue_input("write_index", self.small["write_index"])
            b.bind_ortvalue_input("positions", pos)
            b.bind_ortvalue_output("new_key", self._ov(st["nk"]))
            b.bind_ortvalue_output("new_value", self._ov(st["nv"]))
        return b

    # ---- the step -----------------------------------------------------------------------------
    def forward(self, input_ids: np.ndarray, positions: np.ndarray, key_mask: np.ndarray,
                slot: int, layers: Sequence[int]) -> np.ndarray:
        B, S = input_ids.shape
        layers, plan = begin_step(self, input_ids, positions, key_mask, slot, layers, self.capacity)
        st = self._bindings(S) if plan.prefill else self.decode
        st["ids"][:], st["pos"][:], st["last"][:] = plan.ids, plan.positions, plan.last
        self.write_index[:] = plan.write_index
        new_len = plan.new_lengths
        self.seqlens[:] = new_len - 1
        self.total[...] = new_len.max() if slot else S  # GQA: S == total marks the first prompt
        if self.capture is not None:
            self.capture("embed", {"input_ids": st["ids"], "positions": st["pos"]})
        self.embed.run_with_iobinding(st["embed"])
        p = 0
        for l in layers:
            if self.capture is not None:
                self.capture(graph_name(l), self._layer_feeds(l, st, p))
            st["sessions"][l].run_with_iobinding(st["layers"][l][p])
            if self.kind == "standard":
                self._scatter(l, st, S)
            p = 1 - p
            self.layer_len[l] = slot + S
        if self.capture is not None:
            self.capture("lm_head", {"hidden": st["hid"][p], "last_index": st["last"]})
        self.head.run_with_iobinding(st["head"][p])
        self.lengths = new_len
        return self.out["logits"].copy()  # (B, V)

    def _layer_feeds(self, l: int, st: dict, p: int) -> dict[str, np.ndarray]:
        """The arrays bound as layer l's inputs (hidden in buffer p), by input name."""
        feeds = {"hidden": st["hid"][p], "past_key": self.k[l], "past_value": self.v[l]}
        if self.kind == "gqa":
            return {**feeds, "seqlens_k": self.seqlens, "total_sequence_length": self.total}
        return {**feeds, "write_index": self.write_index, "positions": st["pos"]}

    def _scatter(self, l: int, st: dict, S: int) -> None:
        """Write the S new K/V of each row at [write_index, write_index + S) (standard graphs)."""
        if S == 1:
            rows = np.arange(self.batch)
            self.k[l][rows, :, self.write_index] = st["nk"][:, :, 0]
            self.v[l][rows, :, self.write_index] = st["nv"][:, :, 0]
        else:  # prefill: every row starts at 0
            self.k[l][:, :, :S] = st["nk"]
            self.v[l][:, :, :S] = st["nv"]
