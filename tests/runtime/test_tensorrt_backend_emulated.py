"""The TensorRT backend's own code (row ranges as pointer offsets, pitched scatters, moves) on an
emulated GPU, so it runs in CI: device memory is a numpy heap, copies are numpy slices, and each
"engine" is the ONNX Runtime session of the standard-op graph it would be built from. The real
engines are tested in test_tensorrt_backend.py where a GPU exists."""

from __future__ import annotations

import types

import numpy as np
import onnxruntime as ort
import pytest

from tiny import assert_greedy_matches_reference, run_arrivals, solo_tokens

from skipdecode.models.backend import TorchBackend
from skipdecode.runtime import Engine, EngineConfig, Request
from skipdecode.schedule import Schedule

ORT_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
              "tensor(float16)": np.float16}


class Heap:
    def __init__(self, size: int = 1 << 25):
        self.mem = np.zeros(size, np.uint8)
        self.top = 4096

    def alloc(self, nbytes: int) -> int:
        ptr, self.top = self.top, self.top + (nbytes + 255) // 256 * 256
        assert self.top <= len(self.mem), "emulated device out of memory"
        return ptr

    def view(self, ptr: int, shape, dtype) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        assert 0 < ptr and ptr + n <= self.top, f"access outside allocated device memory: {ptr}+{n}"
        return self.mem[ptr:ptr + n].view(dtype).reshape(shape)


@pytest.fixture
def emulated(monkeypatch, tiny_export):
    import skipdecode.runtime.tensorrt_backend as tb

    heap = Heap()

    class DeviceArray:
        def __init__(self, shape, dtype):
            self.shape, self.dtype = tuple(shape), np.dtype(dtype)
            self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
            self.ptr = heap.alloc(max(self.nbytes, 1))

        def zero(self, stream):
            heap.mem[self.ptr:self.ptr + self.nbytes] = 0

        def upload(self, host, stream):
            host = np.ascontiguousarray(host, dtype=self.dtype)
            assert host.nbytes <= self.nbytes
            heap.mem[self.ptr:self.ptr + host.nbytes] = host.view(np.uint8).ravel()

        def download(self, host, stream):
            host.view(np.uint8).ravel()[:] = heap.mem[self.ptr:self.ptr + host.nbytes]
            return host

    def copy_2d(dst, dst_pitch, src, src_pitch, width, height, stream):
        for i in range(height):
            heap.mem[dst + i * dst_pitch:dst + i * dst_pitch + width] = \
                heap.mem[src + i * src_pitch:src + i * src_pitch + width].copy()

    class FakeEngine:
        def __init__(self, trt, runtime, path, stream):
            self.sess = ort.InferenceSession(str(path))

        def run(self, profile, shapes, addresses, stream):
            feeds = {i.name: heap.view(addresses[i.name], shapes[i.name], ORT_DTYPES[i.type]).copy()
                     for i in self.sess.get_inputs()}
            for o, value in zip(self.sess.get_outputs(), self.sess.run(None, feeds)):
                heap.view(addresses[o.name], value.shape, value.dtype)[...] = value

    class Logger:
        WARNING = 0

        def __init__(self, level):
            pass

    folder, loaded, _ = tiny_export("llama-trt")
    from skipdecode.runtime.manifest import load_manifest

    m = load_manifest(folder, verify=False)
    record = {"max_batch": 4, "engines": {"embed": m.graphs.embed.file, "lm_head": m.graphs.lm_head.file,
                                          "layers": [e.file for e in m.graphs.layers]}}
    fake_trt = types.SimpleNamespace(__version__="emulated", Runtime=lambda logger: None, Logger=Logger)
    for name, value in {"DeviceArray": DeviceArray, "copy_2d": copy_2d, "_Engine": FakeEngine,
                        "Stream": lambda: types.SimpleNamespace(ptr=0, synchronize=lambda: None),
                        "import_tensorrt": lambda: fake_trt, "load_engine_record": lambda d: record,
                        "check_compatible": lambda *a: None, "gpu_identity": lambda: "emulated"}.items():
        monkeypatch.setattr(tb, name, value)
    return tb.TensorRTBackend(folder), loaded


def test_greedy_matches_torch_under_skip_schedule(emulated):
    trt, loaded = emulated
    assert_greedy_matches_reference(trt, loaded.model)


def test_continuous_batching_with_mixed_speedups_equals_alone(emulated):
    trt, loaded = emulated
    family = [Schedule.full(6), Schedule(6, 5, 2, window=6), Schedule.constant(6, 3), Schedule(6, 4, 1, window=4)]
    reqs = [(2 * i, Request([5 + i, 9, 14 + i][: 1 + i % 3], 5 + i, family[i % 4], ignore_eos=True)) for i in range(7)]
    engine = Engine(trt, [2], 0, EngineConfig(max_rows=3, max_len=40))
    run_arrivals(engine, reqs)
    assert any(c[0] == "move" for c in trt.calls)
    for _, r in reqs:
        assert engine.pop_result(r.request_id).token_ids == solo_tokens(TorchBackend(loaded.model), r, 40)
