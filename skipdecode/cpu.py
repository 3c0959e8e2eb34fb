"""What this machine's CPU can do, read from /proc/cpuinfo (torch-free): the flags behind
``--mixed-precision auto`` (training/precision.py) and ``calibrate --reduce-range auto``.

>>> int8_saturates({"avx2", "fma"}, machine="x86_64")   # AVX2 without VNNI: ORT's U8S8 kernels saturate
True
>>> int8_saturates({"avx2", "avx512_vnni"}, machine="x86_64"), int8_saturates(set(), machine="aarch64")
(False, False)
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Iterable

INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
"""x86 flags of an int8 dot-product instruction (VNNI, AMX) that ONNX Runtime's U8S8 kernels use."""
X86 = ("x86_64", "amd64", "i386", "i686", "x86")


@functools.lru_cache(maxsize=None)
def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags``, ARM ``Features``); empty where unreadable. Read once
    per file: calibration asks for every graph it quantizes."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.lru_cache(maxsize=None)
def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name (x86 ``model name``, else ARM ``Hardware``/``CPU part``), else
    platform's processor string, else the architecture: what benchmark and eval reports name."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        text = ""
    for key in ("model name", "Hardware"):
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key and value.strip():
                return value.strip()
    return platform.processor() or platform.machine()


def int8_saturates(flags: Iterable[str] | None = None, machine: str | None = None) -> bool:
    """Whether ONNX Runtime's int8 (U8S8) MatMul kernels on this CPU can saturate with full-range
    8-bit weights: an x86 CPU without VNNI or AMX adds pairs of uint8 x int8 products into int16
    (``vpmaddubsw``), which overflows; ORT's remedy is 7-bit weights (``reduce_range``). ARM's dot
    products and VNNI do not saturate. An x86 CPU whose flags cannot be read counts as saturating."""
    machine = (machine if machine is not None else platform.machine()).lower()
    if machine not in X86:
        return False
    flags = cpu_flags() if flags is None else frozenset(flags)
    return not set(INT8_DOT_FLAGS) & flags
