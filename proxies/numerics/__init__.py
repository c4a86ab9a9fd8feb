"""Exact numerics of the formats runtimes serve (GGUF block types, NVFP4/MX/FP8): quantize,
decode bit-exactly as the runtime does, and pack into the bytes it stores."""
from __future__ import annotations

import torch

from search import runtime_formats as rf


def fake_quant(w2d: torch.Tensor, name: str) -> torch.Tensor:
    """A 2-D weight (rows, reduction) as the runtime decodes it after storing it in ``name``
    (already the type the row length allows: ``Format.stored_as``)."""
    if name == rf.FLOAT:
        return w2d.clone()
    if rf.get(name).family == "gguf":
        from proxies.numerics import gguf_quants
        return gguf_quants.fake_quant(w2d, name)
    from proxies.numerics import fp_quants
    return fp_quants.fake_quant(w2d, name)
