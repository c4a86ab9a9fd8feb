"""Weight-only fake quantization (DESIGN §3): round-to-nearest per group along the reduction
dim, fp16 scales. Pure tensor functions, vectorised over all groups of a weight."""
from __future__ import annotations

import torch
from torch import nn

from search.formats import Format

_FP16_TINY = 6.1e-5  # smallest normal fp16; a zero scale would divide by zero


def to_2d(module: nn.Module, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The weight as (rows, reduction): Linear as is, Conv flattened over in/groups·kh·kw,
    HF Conv1D (stored in×out) transposed, Embedding rows are tokens."""
    w = module.weight if weight is None else weight
    if type(module).__name__ == "Conv1D":
        return w.t()
    return w.reshape(w.shape[0], -1)


def from_2d(module: nn.Module, w2d: torch.Tensor) -> torch.Tensor:
    if type(module).__name__ == "Conv1D":
        return w2d.t().contiguous()
    return w2d.reshape(module.weight.shape)


def rtn(w: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Round-to-nearest fake quantization of a 2-D weight (rows, reduction) in ``fmt``.
    A last partial group is padded by repeating its last value, which leaves its min/max
    (and so its scale) unchanged."""
    if fmt.is_float:
        return w.clone()
    rows, cols = w.shape
    g = fmt.group_size or cols
    pad = (-cols) % g
    x = w.float()
    if pad:
        x = torch.cat([x, x[:, -1:].expand(rows, pad)], dim=1)
    x = x.reshape(rows, -1, g)
    if fmt.symmetric:
        qmax = 2 ** (fmt.bits - 1) - 1
        s = (x.abs().amax(-1, keepdim=True) / qmax).half().float().clamp_min(_FP16_TINY)
        q = torch.clamp(torch.round(x / s), -qmax - 1, qmax)
        xh = q * s
    else:
        qmax = 2 ** fmt.bits - 1
        # the range always includes 0 so the zero point fits in ``bits`` unsigned bits, as the
        # cost model counts it; a same-sign group would otherwise clamp z and saturate
        mn, mx = x.amin(-1, keepdim=True).clamp_max(0), x.amax(-1, keepdim=True).clamp_min(0)
        s = ((mx - mn) / qmax).half().float().clamp_min(_FP16_TINY)
        z = torch.clamp(torch.round(-mn / s), 0, qmax)
        q = torch.clamp(torch.round(x / s) + z, 0, qmax)
        xh = (q - z) * s
    return xh.reshape(rows, -1)[:, :cols].to(w.dtype)


def quantize_module_weight(module: nn.Module, fmt: Format) -> torch.Tensor:
    """The module's weight after RTN in ``fmt``, in the module's own layout."""
    with torch.no_grad():
        return from_2d(module, rtn(to_2d(module).detach(), fmt))
