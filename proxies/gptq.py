"""GPTQ (Frantar et al., 2022): quantize a weight column by column and push each column's
rounding error onto the columns not yet quantized, weighted by the inverse Hessian of the
layer's reconstruction loss ‖XWᵀ − XŴᵀ‖² (H = XᵀX over calibration inputs). Pure tensor
functions: the Hessians come from ``HessianCollector`` (forward hooks, or a TorchScript probe,
over one pass of the Hessian batches), the quantization from ``factor`` + ``gptq``.

Choices, and why:
- the grid is exactly RTN's (``group_params``: fp16 scales, ``bits``-wide zero points), so a
  GPTQ policy costs what the cost model says and exports to the same configs;
- act-order (columns by decreasing Hessian diagonal) uses *static* groups: scales come from the
  original contiguous groups, so the stored layout has no per-column group index (``g_idx``)
  and every kernel that reads plain grouped weights can run it;
- without act-order, a group's scale is set when its first column is reached (from the weights
  as updated so far), and blocks are a whole number of groups so that group is never split;
- Hessians come from the float model's activations, not from a model whose earlier layers are
  already quantized: one Hessian per layer then serves every format, so a (layer, format)
  result is the same whichever policy it sits in, and tables and caches stay valid."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from search.formats import Format
from proxies.capture import Geometry, capture, module_geometry
from proxies.quant import group_params, grouped, quantize_on_grid

MAX_DAMP_TRIES = 6


@dataclass(frozen=True)
class Factor:
    """What GPTQ needs of a layer's Hessian, computed once and reused for every format:
    the upper Cholesky factor of the damped inverse Hessian (in act-order if ``perm``),
    the column permutation, the dead (never active) input columns, and the damping used."""

    u: torch.Tensor
    perm: torch.Tensor | None
    dead: torch.Tensor
    damp: float


def factor(h: torch.Tensor, damp: float = 0.01, act_order: bool = True) -> Factor:
    """Damped inverse-Hessian Cholesky factor. ``damp`` is relative to the mean diagonal; if the
    Hessian is still not positive definite (too few calibration rows for its size), the damping
    grows ×10 per try, and the factor records what was finally used."""
    h = h.double().clone()
    d = h.diagonal()
    dead = d == 0
    h[dead, dead] = 1.0
    perm = torch.argsort(h.diagonal(), descending=True) if act_order else None
    if perm is not None:
        h = h[perm][:, perm]
    mean = float(h.diagonal().mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    for t in range(MAX_DAMP_TRIES):
        lam = damp * 10 ** t
        chol, info = torch.linalg.cholesky_ex(h + lam * mean * eye)
        if int(info) == 0:
            break
    else:
        raise ValueError(f"gptq: the Hessian is not positive definite even with damping {lam:g}; "
                         f"use more calibration data or the rtn quantizer")
    u = torch.linalg.cholesky(torch.cholesky_inverse(chol), upper=True)
    return Factor(u.float(), perm, dead, lam)


def _static_params(w: torch.Tensor, fmt: Format, g: int):
    """Per-group (s, z) of the original contiguous groups, as (rows, n_groups) tensors."""
    s, z, qmin, qmax = group_params(grouped(w, g), fmt)
    return s.squeeze(-1), z.squeeze(-1), qmin, qmax


def gptq(w: torch.Tensor, f: Factor, fmt: Format, block_size: int = 128) -> torch.Tensor:
    """GPTQ of a 2-D weight (rows, reduction) in ``fmt`` given its Hessian ``factor``; returns
    the dequantized weight (same layout and dtype)."""
    if fmt.is_float:
        return w.clone()
    W = w.float().clone()
    rows, cols = W.shape
    W[:, f.dead] = 0
    g = min(fmt.group_size or cols, cols)
    static = f.perm is not None or g == cols
    if static:
        S, Z, qmin, qmax = _static_params(W, fmt, g)
        group_of = (f.perm if f.perm is not None else torch.arange(cols, device=W.device)) // g
        B = block_size
    else:
        B = math.ceil(block_size / g) * g
    if f.perm is not None:
        W = W[:, f.perm]
    U = f.u
    Q = torch.empty_like(W)
    for i1 in range(0, cols, B):
        i2 = min(i1 + B, cols)
        W1 = W[:, i1:i2].clone()
        E1 = torch.empty(rows, i2 - i1, dtype=W.dtype, device=W.device)
        U1 = U[i1:i2, i1:i2]
        for j in range(i2 - i1):
            c = i1 + j
            if static:
                gi = int(group_of[c])
                s, z = S[:, gi:gi + 1], Z[:, gi:gi + 1]
            elif c % g == 0:
                s, z, qmin, qmax = group_params(W1[:, j:j + g], fmt)
            col = W1[:, j:j + 1]
            q = quantize_on_grid(col, s, z, qmin, qmax)
            Q[:, c:c + 1] = q
            e = (col - q) / U1[j, j]
            W1[:, j:] -= e * U1[j:j + 1, j:]
            E1[:, j:j + 1] = e
        if i2 < cols:
            W[:, i2:] -= E1 @ U[i1:i2, i2:]
    if f.perm is not None:
        Q = Q[:, torch.argsort(f.perm)]
    return Q.to(w.dtype)


# ---------------------------------------------------------------- Hessians from calibration data


def input_rows(module: nn.Module, x: torch.Tensor, geom: Geometry | None = None) -> torch.Tensor:
    """The rows the weight multiplies, as (groups, n, reduction): a Linear's (or HF Conv1D's)
    inputs as they are; a conv's unfolded patches, split by conv group so each group of output
    channels gets the Hessian of its own input channels. ``geom`` is how the op really slides
    its kernel (a TorchScript op's constants, or padding inferred from shapes); the module's
    own attributes otherwise."""
    if geom is None or geom.stride is None:
        geom = module_geometry(module)
    if geom.stride is not None:  # a conv (a TorchScript one is known by its op, not its class)
        kernel = tuple(module.weight.shape[2:])
        pads = geom.explicit_pads(kernel)
        flat = [p for lo_hi in reversed(pads) for p in lo_hi]  # F.pad: last dim first
        x = F.pad(x.float(), flat) if any(flat) else x.float()
        if len(kernel) == 1:
            x, kernel = x.unsqueeze(-2), (1,) + kernel
            dil, stride = (1,) + geom.dilation, (1,) + geom.stride
        else:
            dil, stride = geom.dilation, geom.stride
        cols = F.unfold(x, kernel, dilation=dil, stride=stride)  # (N, C·k, P)
        n, ck, p = cols.shape
        gr = geom.groups
        return cols.reshape(n, gr, ck // gr, p).permute(1, 0, 3, 2).reshape(gr, n * p, ck // gr)
    return x.reshape(1, -1, x.shape[-1]).float()


class HessianCollector:
    """Accumulates H = Σ xxᵀ/n per layer over forward passes. ``mask`` (a boolean per token,
    e.g. the attention mask) drops padding positions from token-shaped inputs, which would
    otherwise pull the Hessian towards what pad tokens look like. Inside the block, run the
    forwards on ``runner``: the model itself (forward hooks), or for a TorchScript ``model``
    a probe that reads each layer op's input (proxies.capture)."""

    def __init__(self, modules: list[nn.Module], model: nn.Module | None = None):
        self.modules = modules
        self.model = model
        self.runner = model
        self.h: dict[int, torch.Tensor] = {}
        self.n: dict[int, int] = {}
        self.mask: torch.Tensor | None = None

    def _add(self, i: int, m: nn.Module, x: torch.Tensor, y, geom: Geometry) -> None:
        if isinstance(m, nn.Embedding) or x is None or geom is None:
            return  # geometry None: a TorchScript conv whose stride/padding are not constants
        rows = input_rows(m, x.detach(), geom)
        if self.mask is not None and rows.shape[0] == 1 and rows.shape[1] == self.mask.numel():
            rows = rows[:, self.mask.reshape(-1)]
        if i in self.h:
            self.h[i].baddbmm_(rows.transpose(1, 2), rows)
        else:
            self.h[i] = rows.transpose(1, 2) @ rows
        self.n[i] = self.n.get(i, 0) + rows.shape[1]

    def __enter__(self) -> "HessianCollector":
        self._ctx = capture(self.model if self.model is not None else nn.Module(), self.modules, self._add)
        self.runner = self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)
        self.runner = self.model

    def hessians(self) -> dict[int, torch.Tensor]:
        """Layer index → (groups, d, d) mean outer product; layers never reached are absent."""
        return {i: h / max(self.n[i], 1) for i, h in self.h.items() if self.n[i] > 0}
