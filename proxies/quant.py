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


def group_params(x: torch.Tensor, fmt: Format) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Scale and zero point of every group in ``x`` (..., group) as DESIGN §3 stores them:
    fp16-rounded scales, the zero point an unsigned ``bits``-wide integer (0 when symmetric).
    Returns (s, z, qmin, qmax) with ``s``/``z`` keeping a trailing dim of 1 for broadcasting.
    Shared by RTN and GPTQ so both quantize onto exactly the grid the cost model prices."""
    if fmt.symmetric:
        qmax = 2 ** (fmt.bits - 1) - 1
        s = (x.abs().amax(-1, keepdim=True) / qmax).half().float().clamp_min(_FP16_TINY)
        return s, torch.zeros_like(s), -qmax - 1, qmax
    qmax = 2 ** fmt.bits - 1
    # the range always includes 0 so the zero point fits in ``bits`` unsigned bits, as the cost
    # model counts it; a same-sign group would otherwise clamp z and saturate
    mn, mx = x.amin(-1, keepdim=True).clamp_max(0), x.amax(-1, keepdim=True).clamp_min(0)
    s = ((mx - mn) / qmax).half().float().clamp_min(_FP16_TINY)
    z = torch.clamp(torch.round(-mn / s), 0, qmax)
    return s, z, 0, qmax


def quantize_on_grid(x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Round ``x`` onto the grid (s, z) and decode: ŵ = (clamp(round(x/s) + z) − z)·s."""
    return (torch.clamp(torch.round(x / s) + z, qmin, qmax) - z) * s


def grouped(w: torch.Tensor, g: int) -> torch.Tensor:
    """A 2-D weight (rows, reduction) as (rows, n_groups, g). A last partial group is padded by
    repeating its last value, which leaves its min/max (and so its scale) unchanged."""
    rows, cols = w.shape
    pad = (-cols) % g
    x = torch.cat([w, w[:, -1:].expand(rows, pad)], dim=1) if pad else w
    return x.reshape(rows, -1, g)


def rtn(w: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Round-to-nearest fake quantization of a 2-D weight (rows, reduction) in ``fmt``."""
    if fmt.is_float:
        return w.clone()
    rows, cols = w.shape
    if fmt.runtime:  # a runtime's own format: its numerics, in the type this row length gets
        from proxies.numerics import fake_quant
        eff = fmt.stored_as(cols)
        return w.clone() if eff.is_float else fake_quant(w, eff.runtime).to(w.dtype)
    x = grouped(w.float(), fmt.group_size or cols)
    xh = quantize_on_grid(x, *group_params(x, fmt))
    return xh.reshape(rows, -1)[:, :cols].to(w.dtype)


def quantize_module_weight(module: nn.Module, fmt: Format) -> torch.Tensor:
    """The module's weight after RTN in ``fmt``, in the module's own layout."""
    with torch.no_grad():
        return from_2d(module, rtn(to_2d(module).detach(), fmt))
