"""Feasibility repair and greedy fill shared by the rounding solvers (lp, convex).

Repair downgrades the group whose move costs the least loss per unit of violated budget saved
until every budget holds; fill then spends any slack on the upgrades with the best loss gain
per unit of (normalised) cost. Both work on groups, so ties stay honoured."""
from __future__ import annotations

import numpy as np

from search.problem import InfeasibleError, Problem

_TOL = 1e-9


def _deltas(problem: Problem, gchoice: np.ndarray) -> dict[str, np.ndarray]:
    rows = np.arange(len(gchoice))
    return {m: (C - C[rows, gchoice][:, None]) / problem.budgets[m] for m, C in problem.group_cost.items()}


def repair(problem: Problem, gchoice: np.ndarray) -> np.ndarray:
    """Downgrade until feasible; if no greedy move helps, fall back to the exact ILP, so
    InfeasibleError means that no policy meets every budget."""
    gchoice = gchoice.copy()
    rows = np.arange(len(gchoice))
    for _ in range(gchoice.size * problem.n_formats + 1):
        totals = problem.group_totals(gchoice)
        over = [m for m, lim in problem.budgets.items() if totals[m] > lim * (1 + _TOL)]
        if not over:
            return gchoice
        d = _deltas(problem, gchoice)
        saving = -sum(d[m] for m in over)
        no_increase = np.all(np.stack([d[m] <= 1e-15 for m in problem.budgets]), axis=0)
        ok = (saving > 0) & no_increase
        if not ok.any():
            break
        dloss = problem.group_loss - problem.group_loss[rows, gchoice][:, None]
        ratio = np.where(ok, np.maximum(dloss, 0) / np.where(ok, saving, 1), np.inf)
        g, k = np.unravel_index(np.argmin(ratio), ratio.shape)
        gchoice[g] = k
    # Stuck: with several budgets a downgrade on one metric can be an upgrade on another (e.g. a
    # latency table where low-bit kernels are slower), so the greedy can miss feasible policies.
    # Settle feasibility exactly; the ILP raises InfeasibleError only when no policy fits.
    from search.solvers.ilp import ILPSolver  # local: ilp is a sibling solver, keep imports one-way
    return problem.collapse(ILPSolver().solve(problem).choice)


def fill(problem: Problem, gchoice: np.ndarray) -> np.ndarray:
    """Greedy upgrades that keep every budget, best loss reduction per normalised cost first."""
    gchoice = gchoice.copy()
    rows = np.arange(len(gchoice))
    for _ in range(gchoice.size * problem.n_formats + 1):
        totals = problem.group_totals(gchoice)
        d = _deltas(problem, gchoice)
        slack_ok = np.all(np.stack([totals[m] / lim + d[m] <= 1 + _TOL for m, lim in problem.budgets.items()]), axis=0)
        gain = problem.group_loss[rows, gchoice][:, None] - problem.group_loss
        ok = slack_ok & (gain > 0)
        if not ok.any():
            return gchoice
        spend = np.maximum(sum(np.maximum(d[m], 0) for m in problem.budgets), 1e-15)
        score = np.where(ok, gain / spend, -np.inf)
        g, k = np.unravel_index(np.argmax(score), score.shape)
        gchoice[g] = k
    return gchoice


def repair_and_fill(problem: Problem, gchoice: np.ndarray) -> np.ndarray:
    return fill(problem, repair(problem, gchoice))
