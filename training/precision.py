"""What ``--mixed-precision auto`` trains in: bf16 autocast (fp32 master weights) where bf16 is
native and measured faster, else fp32.

On a CPU, oneDNN runs bf16 matmuls natively only with AMX or AVX512-BF16 (ARM: the ``bf16``
feature); elsewhere it emulates them, slower than fp32. The flags are only the precondition: the
choice is made by timing a Linear pair's forward and backward at the model's sizes in fp32 and
under bf16 autocast (well under a second), and bf16 must be at least ``THRESHOLD`` times faster.
The decision is cached per process and sizes. On CUDA, bf16 wherever the GPU supports it.

>>> choose({"avx2"}, measure=lambda: 3.0).setting  # no native bf16: nothing is timed
'no'
>>> c = choose({"amx_bf16", "avx512_bf16"}, measure=lambda: 2.1)
>>> c.setting, c.bf16_speedup
('bf16', 2.1)
>>> choose({"avx512_bf16"}, measure=lambda: 1.1).setting  # native but not faster enough
'no'
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from skipdecode.cpu import cpu_flags

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
"""/proc/cpuinfo flags under which oneDNN has native bf16 kernels (x86 AMX, AVX512-BF16; ARM bf16)."""
THRESHOLD = 1.3
"""bf16 must run the micro-benchmark this many times faster than fp32 to be chosen."""
BENCH_TOKENS = 1024
"""Rows of the micro-benchmark's activations (about one training batch: 16 sequences of ~64 tokens).
At 256 rows the first timing in a process was noise-bound on an AMX Xeon: 1.10-2.3x over fresh
processes, so auto sometimes chose fp32; at 1024 it measured 2.3-3.5x (0.3-0.5 s)."""


@dataclass(frozen=True)
class PrecisionChoice:
    setting: str
    """accelerate's mixed precision: "bf16", "fp16" or "no" (fp32)."""
    reason: str
    bf16_speedup: float | None = None
    """fp32 seconds / bf16-autocast seconds of the micro-benchmark, where it ran."""

    def describe(self) -> str:
        name = {"no": "fp32", "bf16": "bf16 autocast (fp32 master weights)"}.get(self.setting, self.setting)
        return f"{name}: {self.reason}"


def bf16_speedup(hidden: int, intermediate: int, tokens: int = BENCH_TOKENS, repeats: int = 5) -> float:
    """fp32 / bf16-autocast time (best of ``repeats``, after two warm-ups each) of an MLP's two
    Linears, forward and backward, at the model's sizes, on the CPU. The two precisions alternate,
    so a burst of load from elsewhere hits both."""
    gen = torch.Generator().manual_seed(0)
    up, down = torch.nn.Linear(hidden, intermediate), torch.nn.Linear(intermediate, hidden)
    x = torch.randn(tokens, hidden, generator=gen)

    def step(bf16: bool) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = down(torch.relu(up(x))).float().square().mean()
        loss.backward()
        return time.perf_counter() - t0

    for _ in range(2):  # warm-up: oneDNN picks, JITs and caches its kernels
        step(False), step(True)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for bf16 in (False, True):
            times[bf16].append(step(bf16))
    return min(times[False]) / min(times[True])


def choose(flags: Iterable[str], measure: Callable[[], float], threshold: float = THRESHOLD) -> PrecisionChoice:
    """The CPU decision: bf16 only with a native-bf16 flag and a measured speedup >= ``threshold``."""
    native = [f for f in NATIVE_BF16_FLAGS if f in set(flags)]
    if not native:
        return PrecisionChoice("no", "the CPU has no native bf16 (no AMX, AVX512-BF16 or ARM bf16): oneDNN would "
                                     "emulate it")
    ratio = round(measure(), 3)
    if ratio >= threshold:
        return PrecisionChoice("bf16", f"{'/'.join(native)}, bf16 measured {ratio:.2f}x as fast as fp32", ratio)
    return PrecisionChoice("no", f"{'/'.join(native)}, but bf16 measured only {ratio:.2f}x as fast as fp32 "
                                 f"(needs {threshold:g}x)", ratio)


@functools.lru_cache(maxsize=None)
def _auto_cpu(hidden: int, intermediate: int) -> PrecisionChoice:
    return choose(cpu_flags(), lambda: bf16_speedup(hidden, intermediate))


def resolve(setting: str, hidden: int, intermediate: int, cuda: bool | None = None) -> PrecisionChoice:
    """accelerate's mixed precision for a ``TrainConfig.mixed_precision`` setting and model sizes."""
    if setting != "auto":
        return PrecisionChoice(setting, "as asked (--mixed-precision)")
    if torch.cuda.is_available() if cuda is None else cuda:
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16", "CUDA with bf16 support")
        return PrecisionChoice("no", "CUDA without bf16 support")
    return _auto_cpu(hidden, intermediate)
