"""TensorRT backend: chains the engines of `skipdecode build-engines` on one CUDA stream.

Owns one K and one V device buffer ``(B, H_kv, T_max, D)`` per layer, allocated once per batch
size; rows are stored right-padded (row b's position p at index p, runtime/layout.py). Each
layer engine returns the K/V of its S new tokens, which are copied into the buffers at the row's
write index with pitched device-to-device copies: nothing is concatenated, nothing goes through
the host. Hidden states ping-pong between two device buffers. Each engine has two execution
contexts, one per optimisation profile (0: prefill, 1: decode with S = 1). Only the logits of the
last column come back to the host.

Imports neither torch nor transformers: tensorrt, cuda-python and numpy only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from skipdecode.errors import SkipDecodeError
from skipdecode.runtime.cuda import DeviceArray, Stream, copy_2d
from skipdecode.runtime.layout import begin_step
from skipdecode.runtime.manifest import load_manifest
from skipdecode.runtime.tensorrt_engines import (PROFILES, check_compatible, gpu_identity, import_tensorrt,
                                                 load_engine_record)

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

    def run(self, profile: int, shapes: dict[str, tuple], buffers: dict[str, DeviceArray], stream: Stream) -> None:
        ctx = self.contexts[profile]
        for name in self.names:
            if name in self.inputs:
                ctx.set_input_shape(name, shapes[name])
            ctx.set_tensor_address(name, buffers[name].ptr)
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
        self.batch = 0
        self.max_s = 0
        self.layer_calls: list[tuple[int, tuple[int, ...]]] = []

    # ---- buffers ------------------------------------------------------------------------------
    def allocate(self, batch_size: int, max_len: int) -> None:
        if batch_size > self.max_batch:
            raise SkipDecodeError(f"batch of {batch_size}, engines built for at most {self.max_batch} (--max-batch)")
        if max_len > self.max_positions:
            raise SkipDecodeError(f"{max_len} positions needed, the engines' KV buffers hold {self.max_positions}")
        self.layer_len = [0] * self.num_layers
        self.lengths = np.zeros(batch_size, np.int64)
        self.layer_calls.clear()
        if batch_size == self.batch:
            return
        B, H, D = batch_size, self.kv_heads, self.head_dim
        self.batch, self.max_s = B, 0
        kv = (B, H, self.max_seq, D)  # (B, H_kv, T_max, D)
        self.k = [DeviceArray(kv, self.dtype) for _ in range(self.num_layers)]
        self.v = [DeviceArray(kv, self.dtype) for _ in range(self.num_layers)]
        for buf in (*self.k, *self.v):  # cudaMalloc leaves garbage; a NaN there leaks through 0 * NaN
            buf.zero(self.stream)       # in the masked attention of slots not yet written
        self.write_index = DeviceArray((B,), np.int32)
        self.last = DeviceArray((B,), np.int64)
        self.head_out = {"logits": DeviceArray((B, self.vocab), np.float32),
                         "next_token": DeviceArray((B,), np.int64),
                         "topk_values": DeviceArray((B, self.top_k), np.float32),
                         "topk_ids": DeviceArray((B, self.top_k), np.int64)}
        self.logits = np.zeros((B, self.vocab), np.float32)

    def _ensure_seq(self, S: int) -> None:
        """Token, hidden and new-KV buffers for up to S tokens per row."""
        if S <= self.max_s:
            return
        B, H, D = self.batch, self.kv_heads, self.head_dim
        self.max_s = S
        self.ids = DeviceArray((B, S), np.int64)
        self.pos = DeviceArray((B, S), np.int64)
        self.hid = [DeviceArray((B, S, self.hidden_size), self.dtype) for _ in range(2)]
        self.nk = DeviceArray((B, H, S, D), self.dtype)
        self.nv = DeviceArray((B, H, S, D), self.dtype)

    # ---- the step -----------------------------------------------------------------------------
    def forward(self, input_ids: np.ndarray, positions: np.ndarray, key_mask: np.ndarray,
                slot: int, layers: Sequence[int]) -> np.ndarray:
        B, S = input_ids.shape
        layers, plan = begin_step(self, input_ids, positions, key_mask, slot, layers, self.max_seq)
        profile, write = (PREFILL if plan.prefill else DECODE), plan.write_index
        self._ensure_seq(S)
        st = self.stream
        self.ids.upload(plan.ids, st), self.pos.upload(plan.positions, st), self.last.upload(plan.last, st)
        self.write_index.upload(write, st)
        hidden_shape = (B, S, self.hidden_size)
        kv_shape = (B, self.kv_heads, self.max_seq, self.head_dim)
        self.embed.run(profile, {"input_ids": (B, S), "positions": (B, S)},
                       {"input_ids": self.ids, "positions": self.pos, "hidden": self.hid[0]}, st)
        p = 0
        for l in layers:
            self.layers[l].run(profile, {"hidden": hidden_shape, "past_key": kv_shape, "past_value": kv_shape,
                                         "write_index": (B,), "positions": (B, S)},
                               {"hidden": self.hid[p], "past_key": self.k[l], "past_value": self.v[l],
                                "write_index": self.write_index, "positions": self.pos, "hidden_out": self.hid[1 - p],
                                "new_key": self.nk, "new_value": self.nv}, st)
            self._scatter(l, write, S)
            self.layer_len[l] = slot + S
            p = 1 - p
        self.head.run(profile, {"hidden": hidden_shape, "last_index": (B,)},
                      {"hidden": self.hid[p], "last_index": self.last, **self.head_out}, st)
        self.head_out["logits"].download(self.logits, st)
        st.synchronize()
        self.lengths = plan.new_lengths.astype(np.int64)
        return self.logits.copy()  # (B, V)

    def _scatter(self, l: int, write: np.ndarray, S: int) -> None:
        """Copy the new K/V (B, H_kv, S, D) into row b's buffers at [write_b, write_b + S)."""
        isz, D, H, T = self.dtype.itemsize, self.head_dim, self.kv_heads, self.max_seq
        row_bytes = S * D * isz
        for new, buf in ((self.nk, self.k[l]), (self.nv, self.v[l])):
            if S > 1:  # prefill: every row starts at 0, one pitched copy for the whole batch
                copy_2d(buf.ptr, T * D * isz, new.ptr, row_bytes, row_bytes, self.batch * H, self.stream)
                continue
            for b in range(self.batch):
                dst = buf.ptr + (b * H * T + int(write[b])) * D * isz
                copy_2d(dst, T * D * isz, new.ptr + b * H * D * isz, D * isz, D * isz, H, self.stream)
