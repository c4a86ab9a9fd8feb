"""The precision of the engine's *comparison* passes: the measured proxy's cells and refine's judge.

Those passes only rank policies (which layer loses most at a format, which candidate beats the
best policy so far), and every number they compare comes from the same kind of pass, so bf16
matrix products halve their cost where the hardware multiplies bf16 natively (AVX512-BF16 or
AMX on x86, bf16-capable CUDA GPUs) without moving the ranking: the float reference, the
quantized layers and the base loss all run under the same autocast. The passes whose numbers a
user reads — the calibration references and every held-out metric — always run in float32.

``compute_dtype`` ("auto" | "float32" | "bfloat16"): "auto" is bf16 where it is native and
float32 elsewhere (emulated bf16 is slower than float32); the table's parameters and the refine
report name the one used, so a table measured in bf16 is never mistaken for a float32 one."""
from __future__ import annotations

import contextlib
from functools import lru_cache

import torch

COMPUTE_DTYPES = ("auto", "float32", "bfloat16")


@lru_cache(maxsize=None)
def native_bf16(device_type: str) -> bool:
    """Whether ``device_type`` multiplies bf16 matrices in hardware (a faster path than float32)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(cpu, c, lambda: False)()) for c in checks)
    return False


def resolve_compute_dtype(name: str | None, device: torch.device | str = "cpu") -> str:
    """The dtype name a job's comparison passes use on ``device``: "float32" or "bfloat16"."""
    name = (name or "auto").strip().lower()
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype {name!r} is not one of {', '.join(COMPUTE_DTYPES)}")
    if name != "auto":
        return name
    return "bfloat16" if native_bf16(torch.device(device).type) else "float32"


def comparison_precision(dtype: str | None, device: torch.device | str = "cpu"):
    """A context running matrix products in ``dtype`` (autocast); a no-op for float32/None."""
    if dtype in (None, "float32"):
        return contextlib.nullcontext()
    dev = torch.device(device).type
    # no cast cache: the engine swaps quantized weights into the same parameters (param.data),
    # and a cached bf16 copy of a parameter would keep serving the weight it was cast from
    return torch.autocast(dev if dev in ("cpu", "cuda") else "cpu", dtype=getattr(torch, dtype), cache_enabled=False)

