"""BAQ-style closed-form allocation (DESIGN §5).

Each group's loss is modelled as L_g(b) = s_g·2^(−θ(b − b_ref)) in *effective* bits b (storage
bits per weight, overhead included). Minimising Σ_g L_g(b_g) under Σ_g w_g·b_g ≤ B gives reverse
water-filling b_g = b_ref + (1/θ)·log2(θ·ln2·s_g / (λ·w_g)) — with equal weights exactly
b_ref + (1/θ)·log2(s_g / GM(s)) at the average. λ is found by bisection on the rounded policy's
real costs; rounding goes to the nearest available format, then repair and fill."""
from __future__ import annotations

import numpy as np

from search.problem import InfeasibleError, Problem, Solution
from search.solvers.base import Solver
from search.solvers.ilp import exact_choice
from search.solvers.repair import repair_and_fill


class ConvexSolver(Solver):
    name = "convex"

    def __init__(self, theta: float = 2.0, iterations: int = 60):
        if theta <= 0:
            raise ValueError(f"theta must be > 0, got {theta}")
        self.theta = theta
        self.iterations = iterations

    def _fit(self, problem: Problem, eff_bits: np.ndarray) -> tuple[np.ndarray, float]:
        """Per-group scale s_g fitted in log space on the formats where the loss is positive."""
        b_ref = float(np.median(eff_bits))
        L = np.maximum(problem.group_loss, 0.0)
        floor = max(L[L > 0].min() if (L > 0).any() else 1e-12, 1e-30) * 1e-3
        log_s = np.log2(np.maximum(L, floor)) + self.theta * (eff_bits - b_ref)
        quantized = eff_bits < 15.5  # the float column carries no information about s
        w = np.where(quantized, 1.0, 0.0)
        log_s = (log_s * w).sum(axis=1) / np.maximum(w.sum(axis=1), 1)
        return np.exp2(log_s), b_ref

    def _round(self, b: np.ndarray, eff_bits: np.ndarray) -> np.ndarray:
        return np.abs(eff_bits - b[:, None]).argmin(axis=1)

    def _solve(self, problem: Problem) -> Solution:
        metric = next(iter(problem.budgets))
        numel = np.array([sum(problem.costs.layers[i].numel for i in g) for g in problem.groups], dtype=np.float64)
        eff_bits = np.stack([problem.costs.total_bits[g].sum(axis=0) for g in problem.groups]) / numel[:, None]
        s, b_ref = self._fit(problem, eff_bits)
        C = problem.group_cost[metric]
        span = np.maximum(eff_bits.max(axis=1) - eff_bits.min(axis=1), 1e-9)
        w = np.maximum((C.max(axis=1) - C.min(axis=1)) / span, 1e-30)  # cost per effective bit
        lo_b, hi_b = eff_bits.min(axis=1), eff_bits.max(axis=1)

        def policy(log_lam: float) -> np.ndarray:
            b = b_ref + (np.log2(self.theta * np.log(2) * s / w) - log_lam) / self.theta
            return self._round(np.clip(b, lo_b, hi_b), eff_bits)

        lo, hi = -200.0, 200.0  # log2 λ: small λ → many bits, large λ → few bits
        best = None
        for _ in range(self.iterations):
            mid = (lo + hi) / 2
            g = policy(mid)
            totals = problem.group_totals(g)
            if all(totals[m] <= lim * (1 + 1e-9) for m, lim in problem.budgets.items()):
                best, hi = g, mid
            else:
                lo = mid
        start = best if best is not None else policy(hi)
        try:
            gchoice = repair_and_fill(problem, start, exact_choice)
        except InfeasibleError:
            raise
        choice = problem.expand(gchoice)
        return Solution(choice, problem.objective(choice), self.name,
                        info={"theta": self.theta, "b_ref": round(b_ref, 4)})
