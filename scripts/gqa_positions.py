"""One decode step of 16 rows through every layer of an export, with the rows at one position and
with the rows spread around the same mean: what continuous batching's differing row lengths cost
ONNX Runtime's GroupQueryAttention on the CPU (docs/SERVING.md).

    python scripts/gqa_positions.py EXPORT
"""
import sys
import time, numpy as np
from skipdecode.runtime.onnxruntime_backend import OnnxRuntimeBackend
b = OnnxRuntimeBackend(sys.argv[1] if len(sys.argv) > 1 else "out/smollm2-fp32")
B = 16
b.allocate(B, 320)
b.prefill(0, np.full((B, 250), 7), np.full(B, 250), range(30))
full = [(0, B)] * 30
def t(pos, n=12):
    ts = []
    for _ in range(n):
        b.kv_lengths.held[:, :] = pos  # rewrite the same positions each call
        t0 = time.perf_counter(); b.decode(np.full(B, 5), pos, full); ts.append(time.perf_counter() - t0)
    return 1000 * np.median(ts)
same = np.full(B, 150); spread = np.linspace(90, 210, B).astype(np.int64)
for _ in range(2):
    print(f"same positions 150: {t(same):.1f} ms; spread 90-210 (mean 150): {t(spread):.1f} ms; all at 210: {t(np.full(B, 210)):.1f} ms")
