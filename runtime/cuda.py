"""The few CUDA runtime calls the TensorRT backend needs, through NVIDIA's cuda-python
(no torch, no cupy): device buffers, a stream, host<->device and 2-D device copies."""

from __future__ import annotations

import numpy as np

from skipdecode.errors import SkipDecodeError


def cudart():
    try:
        from cuda.bindings import runtime as rt  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart as rt  # older cuda-python
        except ImportError:
            raise SkipDecodeError("the TensorRT backend needs cuda-python: pip install 'skipdecode[tensorrt]'") from None
    return rt


def check(result):
    """cuda-python returns (err, *values): raise on error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    rt = cudart()
    if int(err) != int(rt.cudaError_t.cudaSuccess):
        _, msg = rt.cudaGetErrorString(err)
        raise RuntimeError(f"CUDA error {int(err)}: {msg.decode() if isinstance(msg, bytes) else msg}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


class Stream:
    def __init__(self):
        self.rt = cudart()
        self.handle = check(self.rt.cudaStreamCreate())
        self.ptr = int(self.handle)
        """The raw handle, for APIs that take an integer (TensorRT)."""

    def synchronize(self) -> None:
        check(self.rt.cudaStreamSynchronize(self.handle))

    def __del__(self):
        try:
            self.rt.cudaStreamDestroy(self.handle)
        except Exception:
            pass


class DeviceArray:
    """A dense device buffer with a numpy shape and dtype."""

    def __init__(self, shape: tuple[int, ...], dtype):
        self.rt = cudart()
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self.ptr = int(check(self.rt.cudaMalloc(max(self.nbytes, 1))))

    def zero(self, stream: Stream) -> None:
        check(self.rt.cudaMemsetAsync(self.ptr, 0, self.nbytes, stream.handle))

    def upload(self, host: np.ndarray, stream: Stream) -> None:
        host = np.ascontiguousarray(host, dtype=self.dtype)
        assert host.nbytes <= self.nbytes, (host.shape, self.shape)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(self.rt.cudaMemcpyAsync(self.ptr, host.ctypes.data, host.nbytes, kind, stream.handle))

    def download(self, host: np.ndarray, stream: Stream) -> np.ndarray:
        assert host.flags.c_contiguous and host.nbytes <= self.nbytes
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(self.rt.cudaMemcpyAsync(host.ctypes.data, self.ptr, host.nbytes, kind, stream.handle))
        return host

    def __del__(self):
        try:
            self.rt.cudaFree(self.ptr)
        except Exception:
            pass


def copy_2d(dst: int, dst_pitch: int, src: int, src_pitch: int, width: int, height: int, stream: Stream) -> None:
    """Device-to-device copy of ``height`` rows of ``width`` bytes between pitched buffers."""
    rt = cudart()
    kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
    check(rt.cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width, height, kind, stream.handle))
