"""Evolved proxies (EMQ), the ground truth: the sampled policies whose measured loss a program
must rank, their train/held-out split, and the rank correlation that scores a ranking (also the
joint search's predictor accuracy). numpy/scipy only."""
from __future__ import annotations

import math

import numpy as np


def rank_corr(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(Kendall τ-b, Spearman ρ); 0 when either side is constant."""
    if np.ptp(pred) == 0 or np.ptp(truth) == 0:
        return 0.0, 0.0
    from scipy.stats import kendalltau, spearmanr  # here: the joint solver's registry entry imports this module
    tau = kendalltau(pred, truth).statistic
    rho = spearmanr(pred, truth).statistic
    return float(0.0 if math.isnan(tau) else tau), float(0.0 if math.isnan(rho) else rho)


def sample_policies(costs_per_layer: np.ndarray, numel: np.ndarray, n: int, seed: int,
                    allowed: np.ndarray | None = None) -> np.ndarray:
    """``n`` random policies (format index per layer) stratified by average bits: stratum i gets
    a target between the cheapest and the dearest policy, and every layer draws its format from
    a softmax around that target (random sharpness), so the set spans the budget range instead
    of piling up at its middle. ``costs_per_layer`` is L×K storage bits."""
    rng = np.random.default_rng(seed)
    L, K = costs_per_layer.shape
    bits = costs_per_layer / numel[:, None]
    ok = np.ones(K, bool) if allowed is None else allowed
    lo, hi = bits[:, ok].min(axis=1).mean(), bits[:, ok].max(axis=1).mean()
    out = np.zeros((n, L), dtype=int)
    for i in range(n):
        target = lo + (hi - lo) * (i + rng.random()) / n
        sharp = rng.uniform(0.5, 4.0)
        logits = -sharp * np.abs(bits - target)
        logits[:, ~ok] = -np.inf
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        out[i] = [rng.choice(K, p=p[l]) for l in range(L)]
    return out


def split(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/held-out split of ``n`` ground-truth policies."""
    if not 0.05 <= holdout <= 0.8:
        raise ValueError(f"holdout={holdout}: use a fraction between 0.05 and 0.8")
    idx = np.random.default_rng(seed + 7919).permutation(n)
    k = max(3, int(round(n * holdout)))
    return np.sort(idx[k:]), np.sort(idx[:k])

