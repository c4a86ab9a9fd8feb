"""Pruning of one layer's weight, for the joint search (APQ): unstructured magnitude pruning and
structured output-channel pruning. Both return a weight of the same shape with the pruned entries
zeroed; the storage they save is counted in search/joint.py."""
from __future__ import annotations

import torch
from torch import nn

from proxies.quant import from_2d, to_2d


def magnitude_prune(w: torch.Tensor, ratio: float) -> torch.Tensor:
    """Unstructured magnitude pruning: zero the ``ratio`` fraction of smallest |w| of the layer."""
    if ratio <= 0:
        return w
    k = int(round(ratio * w.numel()))
    if k <= 0:
        return w
    thresh = w.abs().flatten().kthvalue(k).values
    return torch.where(w.abs() <= thresh, torch.zeros_like(w), w)


def channel_prune(module: nn.Module, w: torch.Tensor, ratio: float) -> torch.Tensor:
    """Structured pruning: zero the ``ratio`` fraction of output channels (rows of the 2-D
    weight layout) with the smallest L2 norm — what removing those channels does to the output."""
    if ratio <= 0:
        return w
    w2 = to_2d(module, w)
    rows = w2.shape[0]
    drop = min(int(round(ratio * rows)), rows - 1)
    if drop <= 0:
        return w
    idx = w2.norm(dim=1).argsort()[:drop]
    w2 = w2.clone()
    w2[idx] = 0
    return from_2d(module, w2)
