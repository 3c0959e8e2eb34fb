"""TensorRT backend: chains the engines of `skipdecode build-engines` on one CUDA stream.

Owns one K and one V device buffer ``(R, H_kv, T_max, D)`` per layer; row r's position p lives
at index p (runtime/feeds.py). Every call runs a contiguous range of rows: its buffers are the
range's slice, a pointer offset, never a copy. Each layer engine returns the K/V of its S new
tokens, which are copied into the buffers at the row's write index with pitched device-to-device
copies: nothing is concatenated, nothing goes through the host. Hidden states ping-pong between
two device buffers; rows outside a layer's range are copied across. Each engine has two execution
contexts, one per optimisation profile (0: prefill, 1: decode with S = 1). Only the logits of the
last column come back to the host.

Imports neither torch nor transformers: tensorrt, cuda-python and numpy only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from skipdecode.errors import SkipDecodeError
from skipdecode.runtime.backend import Range
from skipdecode.runtime.cuda import DeviceArray, Stream, copy_2d
from skipdecode.runtime.feeds import KVLengths, check_capacity, decode_feeds, prefill_feeds
from skipdecode.runtime.manifest import load_manifest
from skipdecode.runtime.tensorrt_engines import (PROFILES, check_compatible, check_no_adapters, gpu_identity,
                                                 import_tensorrt, load_engine_record)

PREFILL, DECODE = PROFILES.index("prefill"), PROFILES.index("decode")


class _Engine:
    """A deserialized engine with one execution context per optimisation profile."""

    def __init__(self, trt, runtime, path: Path, stream: Stream):
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise SkipDecodeError(f"{path}: TensorRT cannot deserialize this engine (rebuild it)")
        self.engine = engine
        self.names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = {n for n in self.names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in self.names}
        self.contexts = []
        for p in range(len(PROFILES)):
            ctx = engine.create_execution_context()
            ctx.set_optimization_profile_async(p, stream.ptr)
            self.contexts.append(ctx)

    def run(self, profile: int, shapes: dict[str, tuple], addresses: dict[str, int], stream: Stream) -> None:
        ctx = self.contexts[profile]
        for name in self.names:
            if name in self.inputs:
                ctx.set_input_shape(name, shapes[name])
            ctx.set_tensor_address(name, addresses[name])
        if not ctx.execute_async_v3(stream.ptr):
            raise RuntimeError("TensorRT execution failed")


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, engine_dir: str | Path):
        trt = import_tensorrt()
        self.dir = Path(engine_dir)
        self.record = load_engine_record(self.dir)
        check_compatible(self.record, trt.__version__, gpu_identity(), str(self.dir))
        self.manifest = m = load_manifest(self.dir, verify=False)  # the engines are hashed instead
        check_no_adapters(m, self.dir)
        self.num_layers = m.num_layers
        self.max_seq = m.max_seq
        self.max_positions = min(m.max_seq, m.max_positions)
        self.max_batch = self.record["max_batch"]
        self.dtype = np.dtype(m.dtype)
        self.kv_heads, self.head_dim, self.hidden_size = m.num_kv_heads, m.head_dim, m.hidden_size
        self.vocab, self.top_k = m.vocab_size, m.top_k
        self.stream = Stream()
        self.trt_runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        e = self.record["engines"]
        load = lambda n: _Engine(trt, self.trt_runtime, self.dir / n, self.stream)  # noqa: E731
        self.embed, self.head = load(e["embed"]), load(e["lm_head"])
        self.layers = [load(n) for n in e["layers"]]
        self.rows = 0
        self.max_s = 0
        self.capture = None  # engines are opaque: nothing to capture
        self.calls: list[tuple] = []

    @staticmethod
    def _at(buf: DeviceArray, row: int) -> int:
        """Address of row ``row`` of a (R, ...) device buffer: a range is a pointer offset."""
        return buf.ptr + row * (buf.nbytes // buf.shape[0])

    # ---- buffers ------------------------------------------------------------------------------
    def allocate(self, rows: int, max_len: int) -> None:
        if rows > self.max_batch:
            raise SkipDecodeError(f"{rows} rows, engines built for at most {self.max_batch} (--max-batch)")
        if max_len > self.max_positions:
            raise SkipDecodeError(f"{max_len} positions needed, the engines' KV buffers hold {self.max_positions}")
        self.kv_lengths = KVLengths(self.num_layers, rows)
        self.calls = []
        R, H, D = rows, self.kv_heads, self.head_dim
        self.rows, self.max_s = R, 0
        kv = (R, H, self.max_seq, D)  # (R, H_kv, T_max, D)
        self.k = [DeviceArray(kv, self.dtype) for _ in range(self.num_layers)]
        self.v = [DeviceArray(kv, self.dtype) for _ in range(self.num_layers)]
        for buf in (*self.k, *self.v):  # cudaMalloc leaves garbage; a NaN there leaks through 0 * NaN
            buf.zero(self.stream)       # in the masked attention of slots not yet written
        self.write_index = DeviceArray((R,), np.int32)
        self.last = DeviceArray((R,), np.int64)
        self.head_out = {"logits": DeviceArray((R, self.vocab), np.float32),
                         "next_token": DeviceArray((R,), np.int64),
                         "topk_values": DeviceArray((R, self.top_k), np.float32),
                         "topk_ids": DeviceArray((R, self.top_k), np.int64)}
        self.logits = np.zeros((R, self.vocab), np.float32)

    def _ensure_seq(self, S: int) -> None:
        """Token, hidden and new-KV buffers for up to S tokens per row."""
        if S <= self.max_s:
            return
        R, H, D = self.rows, self.kv_heads, self.head_dim
        self.max_s = S
        self.ids = DeviceArray((R, S), np.int64)
        self.pos = DeviceArray((R, S), np.int64)
        self.hid = [DeviceArray((R, S, self.hidden_size), self.dtype) for _ in range(2)]
        self.nk = DeviceArray((R, H, S, D), self.dtype)
        self.nv = DeviceArray((R, H, S, D), self.dtype)

    # ---- calls --------------------------------------------------------------------------------
    def _chain(self, profile: int, start: int, n: int, S: int, layer_ranges, write: np.ndarray) -> int:
        """Embed rows [start, start + n) (ids/pos already uploaded at row 0), run each (layer,
        a, b) in ``layer_ranges`` (rows relative to ``start``); returns the hidden buffer index."""
        st, at, isz = self.stream, self._at, self.dtype.itemsize
        # ids, pos and hidden hold this call's (n, S) packed at the start of their buffers
        tok = lambda buf, r: buf.ptr + r * S * 8  # noqa: E731  (int64 ids / positions)
        hid_row = S * self.hidden_size * isz
        hid = lambda i, r: self.hid[i].ptr + r * hid_row  # noqa: E731
        self.embed.run(profile, {"input_ids": (n, S), "positions": (n, S)},
                       {"input_ids": self.ids.ptr, "positions": self.pos.ptr, "hidden": self.hid[0].ptr}, st)
        p = 0
        for l, a, b in layer_ranges:
            m = b - a
            if a > 0:  # rows that skip layer l keep their hidden state
                copy_2d(hid(1 - p, 0), hid_row, hid(p, 0), hid_row, hid_row, a, st)
            if b < n:
                copy_2d(hid(1 - p, b), hid_row, hid(p, b), hid_row, hid_row, n - b, st)
            kv = (m, self.kv_heads, self.max_seq, self.head_dim)
            self.layers[l].run(profile, {"hidden": (m, S, self.hidden_size), "past_key": kv, "past_value": kv,
                                         "write_index": (m,), "positions": (m, S)},
                               {"hidden": hid(p, a), "past_key": at(self.k[l], start + a),
                                "past_value": at(self.v[l], start + a), "write_index": at(self.write_index, a),
                                "positions": tok(self.pos, a), "hidden_out": hid(1 - p, a),
                                "new_key": self.nk.ptr, "new_value": self.nv.ptr}, st)
            self._scatter(l, start + a, write[a:b], S)
            p = 1 - p
        return p

    def _head(self, profile: int, n: int, S: int, p: int) -> np.ndarray:
        self.head.run(profile, {"hidden": (n, S, self.hidden_size), "last_index": (n,)},
                      {"hidden": self.hid[p].ptr, "last_index": self.last.ptr,
                       **{k: v.ptr for k, v in self.head_out.items()}}, self.stream)
        self.head_out["logits"].download(self.logits, self.stream)
        self.stream.synchronize()
        return self.logits[:n].copy()  # (n, V)

    def prefill(self, start: int, ids: np.ndarray, lengths: np.ndarray, layers: Sequence[int]) -> np.ndarray:
        n, S = ids.shape
        if start + n > self.rows:
            raise SkipDecodeError(f"rows [{start}, {start + n}) outside the {self.rows} allocated")
        check_capacity(S, self.max_seq)
        self.calls.append(("prefill", (start, start + n), tuple(layers)))
        f = prefill_feeds(lengths, S)
        self._ensure_seq(S)
        st = self.stream
        # the scratch buffers are laid out (R, max_s): pack this call's (n, S) at their start
        self.ids.upload(ids, st), self.pos.upload(np.ascontiguousarray(f.positions), st)
        self.last.upload(f.last, st), self.write_index.upload(f.write_index, st)
        p = self._chain(PREFILL, start, n, S, [(l, 0, n) for l in layers], f.write_index)
        self.kv_lengths.prefill(start, lengths, layers)
        return self._head(PREFILL, n, S, p)

    def decode(self, ids: np.ndarray, positions: np.ndarray, ranges: Sequence[Range]) -> np.ndarray:
        B = len(ids)
        self.calls.append(("decode", [tuple(r) for r in ranges]))
        f = decode_feeds(positions)
        check_capacity(f.total_sequence_length, self.max_seq)
        for l, (a, b) in enumerate(ranges):
            if a < b:
                self.kv_lengths.check(l, a, b, positions[a:b])
        self._ensure_seq(1)
        st = self.stream
        self.ids.upload(np.asarray(ids, np.int64)[:, None], st), self.pos.upload(f.positions, st)
        self.last.upload(f.last, st), self.write_index.upload(f.write_index, st)
        p = self._chain(DECODE, 0, B, 1, [(l, a, b) for l, (a, b) in enumerate(ranges) if a < b], f.write_index)
        for l, (a, b) in enumerate(ranges):
            self.kv_lengths.advance(l, a, b)
        return self._head(DECODE, B, 1, p)

    def move(self, src: Sequence[int], dst: Sequence[int], length: int, layers: Sequence[int]) -> None:
        self.calls.append(("move", list(src), list(dst), length, tuple(layers)))
        isz, H, T, D = self.dtype.itemsize, self.kv_heads, self.max_seq, self.head_dim
        tmp = DeviceArray((len(src), H, T, D), self.dtype)  # every source is read before any write
        self.kv_lengths.move(src, dst, layers)
        for l in layers:
            for buf in (self.k[l], self.v[l]):
                for i, s in enumerate(src):
                    copy_2d(self._at(tmp, i), T * D * isz, self._at(buf, s), T * D * isz, length * D * isz, H, self.stream)
                for i, d in enumerate(dst):
                    copy_2d(self._at(buf, d), T * D * isz, self._at(tmp, i), T * D * isz, length * D * isz, H, self.stream)
        self.stream.synchronize()

    def _scatter(self, l: int, row0: int, write: np.ndarray, S: int) -> None:
        """Copy the new K/V (n, H_kv, S, D) of rows row0.. into their buffers at [write_r, write_r + S)."""
        isz, D, H, T = self.dtype.itemsize, self.head_dim, self.kv_heads, self.max_seq
        n = len(write)
        for new, buf in ((self.nk, self.k[l]), (self.nv, self.v[l])):
            if S > 1:  # prefill: every row starts at 0, one pitched copy for the whole range
                copy_2d(self._at(buf, row0), T * D * isz, new.ptr, S * D * isz, S * D * isz, n * H, self.stream)
                continue
            for i in range(n):
                dst = self._at(buf, row0 + i) + int(write[i]) * D * isz
                copy_2d(dst, T * D * isz, new.ptr + i * H * D * isz, D * isz, D * isz, H, self.stream)
