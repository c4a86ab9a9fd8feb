"""The compact KL to the float model: exact when k is the vocabulary, never above the exact KL,
and off by exactly the tail's share (the chain rule of KL), on peaked LM-like distributions."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from proxies.kl import exact_kl, kl_to_reference, mean_and_stderr, topk_reference


def _lm_like(shape, vocab, seed, temp=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, vocab, generator=g) * temp


def _perturbed(logits, seed, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    return logits + scale * torch.randn(logits.shape, generator=g)


def test_top_k_of_the_whole_vocabulary_is_the_exact_kl():
    p, = [_lm_like((3, 5), 50, 0)]
    q = _perturbed(p, 1)
    ref = topk_reference(p, 50)
    assert torch.allclose(kl_to_reference(ref, q), exact_kl(p, q), atol=1e-5)


@pytest.mark.parametrize("k", [1, 4, 16, 64])
def test_compact_kl_is_a_lower_bound_and_the_gap_is_the_tail_share(k):
    """KL = KL_k + p_tail · KL(p|tail ‖ q|tail): check the identity token by token."""
    p = _lm_like((4, 16), 500, 2)
    q = _perturbed(p, 3)
    ref = topk_reference(p, k)
    approx, exact = kl_to_reference(ref, q), exact_kl(p, q)
    assert (approx >= -1e-6).all() and (approx <= exact + 1e-5).all()
    lp, lq = F.log_softmax(p, -1), F.log_softmax(q, -1)
    tail = torch.ones_like(lp, dtype=torch.bool).scatter(-1, ref.index, False)
    lp_t = torch.where(tail, lp, -math.inf)
    lq_t = torch.where(tail, lq, -math.inf)
    lp_t, lq_t = lp_t - torch.logsumexp(lp_t, -1, keepdim=True), lq_t - torch.logsumexp(lq_t, -1, keepdim=True)
    inside = torch.where(tail, lp_t.exp() * (lp_t - lq_t), torch.zeros_like(lp)).sum(-1)
    assert torch.allclose(approx + ref.logp_tail.exp() * inside, exact, atol=1e-4)


def test_compact_kl_is_close_on_peaked_distributions_and_far_smaller():
    """LM-like peaked logits: at k = 64 of 8,192 the compact KL keeps almost all of the KL."""
    p = _lm_like((8, 32), 8192, 4, temp=4.0)
    q = _perturbed(p, 5, 0.3)
    ref = topk_reference(p, 64)
    approx, exact = kl_to_reference(ref, q).mean(), exact_kl(p, q).mean()
    assert float(ref.logp_tail.exp().mean()) < 0.2
    assert 0.8 * exact <= approx <= exact
    stored = ref.logp.numel() * 4 + ref.index.numel() * 8 + ref.logp_tail.numel() * 4
    assert stored * 40 < p.numel() * 4


def test_zero_kl_at_the_float_model_and_gradients_are_finite():
    p = _lm_like((2, 6), 100, 6)
    ref = topk_reference(p, 8)
    assert torch.allclose(kl_to_reference(ref, p), torch.zeros(2, 6), atol=1e-5)
    q = _perturbed(p, 7).requires_grad_(True)
    kl_to_reference(ref, q).mean().backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


def test_a_reference_with_no_tail_mass_adds_nothing_for_the_tail():
    p = torch.full((1, 4), -1e4)
    p[0, :2] = 0.0  # all mass on two tokens
    ref = topk_reference(p, 2)
    assert float(ref.logp_tail.exp()) == 0.0
    q = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    assert torch.isfinite(kl_to_reference(ref, q)).all()
    assert torch.allclose(kl_to_reference(ref, q), exact_kl(p, q), atol=1e-5)


def test_mean_and_stderr_are_over_sequences():
    mean, se = mean_and_stderr([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and se == pytest.approx(math.sqrt(5 / 3) / 2)
    assert math.isnan(mean_and_stderr([0.5])[1])
    with pytest.raises(ValueError):
        mean_and_stderr([])
    with pytest.raises(ValueError, match="top-k"):
        topk_reference(torch.zeros(3), 0)
