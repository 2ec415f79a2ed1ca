"""What this machine offers a model: the compute dtype it runs fast, the device torch computes on, and the
CPUs this process may use.

bfloat16 halves the bytes of weights, but a CPU without native bf16 arithmetic (AVX512-BF16 or AMX)
emulates it, many times slower than fp32. So bf16 checkpoints compute in fp32 there, and are saved back
in bf16.
"""

import functools
import os
from pathlib import Path

BF16_ENV = "SUPERTINY_CPU_BF16"  # "1" / "0" overrides the probe
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INT8_DOT_ENV = "SUPERTINY_CPU_INT8_DOT"  # "1" / "0" overrides the probe
_INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo is absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """Whether bf16 matmuls run natively on this CPU (``SUPERTINY_CPU_BF16=1|0`` overrides)."""
    override = os.environ.get(BF16_ENV, "").strip()
    if override in ("0", "1"):
        return override == "1"
    flags = cpu_flags()
    if not flags:  # not Linux: trust the checkpoint's dtype, as before the probe existed
        return True
    return any(flag in flags for flag in _NATIVE_BF16_FLAGS)


def cpu_has_int8_dot_product() -> bool:
    """Whether this CPU multiplies int8 by int8 into int32 in one instruction (VNNI or AMX), which int8 x int8
    kernels need to beat fp32; without it an int8 matmul takes several instructions per step
    (``SUPERTINY_CPU_INT8_DOT=1|0`` overrides)."""
    override = os.environ.get(INT8_DOT_ENV, "").strip()
    if override in ("0", "1"):
        return override == "1"
    return any(flag in cpu_flags() for flag in _INT8_DOT_FLAGS)


def cpu_has_amx_int8() -> bool:
    """Whether this CPU has AMX int8 tiles, on which vLLM's CPU build runs W8A8 layers with its own kernels."""
    return "amx_int8" in cpu_flags()


def fast_dtype(declared: str, device: str = "cpu") -> str:
    """The dtype to compute a ``declared``-dtype checkpoint in on ``device``."""
    if device.startswith("cuda"):
        return declared if declared in ("bfloat16", "float16") else "float32"
    return "bfloat16" if declared == "bfloat16" and cpu_has_native_bf16() else "float32"


def torch_device() -> str:
    """``"cuda"`` where torch sees a GPU, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
