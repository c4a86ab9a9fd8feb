"""KL divergence of a quantized language model's next-token distribution to the float model's.

The float model's distributions are computed once per calibration/evaluation token, so they must
be small: a full distribution is vocab floats per token (SmolLM2: 49,152 × 4 B = 192 KiB, 400 MB
for 2k tokens). The reference keeps the float model's ``k`` most likely tokens' log-probabilities
and the log of the mass outside them (the tail). The KL is then taken between the two
distributions coarsened to those k tokens plus one "other" outcome:

    KL_k(p ‖ q) = Σ_{i ∈ top-k(p)} p_i log(p_i / q_i) + p_tail log(p_tail / q_tail)

Coarsening never increases a divergence (the log-sum inequality), so 0 ≤ KL − KL_k, and the gap is
p_tail · KL(p|tail ‖ q|tail): at most the tail mass times the divergence inside the tail. With k = 64
the float tail mass of a small LM on prose is a few percent, and the gap is measured against the
exact KL in tests/proxies/test_kl.py.

Standard errors are over sequences, not tokens: the tokens of a window are correlated (one bad
layer hurts a whole context), so the per-token error would claim more certainty than there is."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_TOP_K = 64


@dataclass
class TopKReference:
    """The float model's next-token distributions, compressed: shapes (..., k), (..., k), (...)."""
    logp: torch.Tensor    # log p of the k most likely tokens, float32
    index: torch.Tensor   # their token ids, int64
    logp_tail: torch.Tensor  # log of the mass of every other token

    @property
    def k(self) -> int:
        return int(self.logp.shape[-1])


def topk_reference(logits: torch.Tensor, k: int = DEFAULT_TOP_K) -> TopKReference:
    """Compress float logits (..., V) to their top-``k`` log-probabilities and the tail mass."""
    if k < 1:
        raise ValueError(f"top-k must be >= 1, got {k}")
    lp = F.log_softmax(logits.float(), dim=-1)
    k = min(k, lp.shape[-1])
    top, idx = lp.topk(k, dim=-1)
    return TopKReference(top.contiguous(), idx.contiguous(), _tail(lp, idx))


def _tail(lp: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """log of the mass outside ``index``, summed directly (1 − Σ top is all rounding error
    when the top holds nearly everything)."""
    return torch.logsumexp(lp.scatter(-1, index, -math.inf), dim=-1)


def _plogratio(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """p · (log p − log q), with 0 · anything = 0 (a zero-mass outcome adds nothing)."""
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p))


def kl_to_reference(ref: TopKReference, logits: torch.Tensor) -> torch.Tensor:
    """Per-token KL_k(p_float ‖ q) (shape ``logits.shape[:-1]``) of logits (..., V) to the
    reference; differentiable in ``logits``."""
    lq = F.log_softmax(logits.float(), dim=-1)
    lq_top = lq.gather(-1, ref.index)
    lq_tail = _tail(lq, ref.index)
    return _plogratio(ref.logp, lq_top).sum(-1) + _plogratio(ref.logp_tail, lq_tail)


def exact_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Per-token KL(p ‖ q) over the whole vocabulary (the reference the top-k form is tested on)."""
    lp, lq = F.log_softmax(logits_p.float(), dim=-1), F.log_softmax(logits_q.float(), dim=-1)
    return _plogratio(lp, lq).sum(-1)


def mean_and_stderr(per_sequence: list[float] | torch.Tensor) -> tuple[float, float]:
    """Mean of equal-weight per-sequence means and its standard error (nan with one sequence)."""
    v = torch.as_tensor(per_sequence, dtype=torch.float64).flatten()
    if v.numel() == 0:
        raise ValueError("no sequences to average")
    se = float(v.std(unbiased=True) / math.sqrt(v.numel())) if v.numel() > 1 else math.nan
    return float(v.mean()), se
