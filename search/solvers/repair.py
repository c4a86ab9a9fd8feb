"""Feasibility repair and greedy fill shared by the rounding solvers (lp, convex, pareto) and
the ILP's incumbent.

Repair downgrades the group whose move costs the least loss per unit of violated budget saved
until every budget holds; fill then spends any slack on the upgrades with the best loss gain
per unit of (normalised) cost. Both work on groups, so ties stay honoured, and both update only
the moved group's row between steps, so a step costs O(groups × formats) without reallocation."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from search.problem import InfeasibleError, Problem

# the exact solver a rounding solver passes in (layer choice of a Problem): the ILP, which
# itself uses repair for its incumbent, so repair never imports it
Exact = Callable[[Problem], np.ndarray]

_TOL = 1e-9


class _State:
    """Current group choice with per-metric cost deltas (relative to each limit) kept up to date."""

    def __init__(self, problem: Problem, gchoice: np.ndarray):
        self.p, self.g = problem, gchoice.copy()
        self.rows = np.arange(len(gchoice))
        self.metrics = list(problem.budgets)
        self.lim = np.array([problem.budgets[m] for m in self.metrics])
        self.C = np.stack([problem.group_cost[m] / problem.budgets[m] for m in self.metrics])  # (M, G, K)
        self.D = self.C - self.C[:, self.rows, self.g][:, :, None]
        self.total = self.C[:, self.rows, self.g].sum(axis=1)  # relative to limits: feasible when <= 1
        self.dloss = problem.group_loss - problem.group_loss[self.rows, self.g][:, None]

    def move(self, grp: int, k: int) -> None:
        self.total += self.D[:, grp, k]
        self.g[grp] = k
        self.D[:, grp, :] = self.C[:, grp, :] - self.C[:, grp, k][:, None]
        self.dloss[grp] = self.p.group_loss[grp] - self.p.group_loss[grp, k]


def repair(problem: Problem, gchoice: np.ndarray, exact: Exact | None = None) -> np.ndarray:
    """Downgrade until feasible. When no greedy move helps (budgets pulling in different
    directions), fall back to ``exact`` (the ILP) so InfeasibleError means no policy fits at
    all; without it, the greedy failure is the InfeasibleError."""
    s = _State(problem, gchoice)
    for _ in range(gchoice.size * problem.n_formats + 1):
        over = s.total > 1 + _TOL
        if not over.any():
            return s.g
        saving = -s.D[over].sum(axis=0)
        ok = (saving > 0) & np.all(s.D <= 1e-15, axis=0)
        if not ok.any():
            break
        ratio = np.where(ok, np.maximum(s.dloss, 0) / np.where(ok, saving, 1), np.inf)
        s.move(*np.unravel_index(np.argmin(ratio), ratio.shape))
    if exact is None:
        raise InfeasibleError(f"greedy repair found no policy within {problem.budgets}")
    return problem.collapse(exact(problem))


def fill(problem: Problem, gchoice: np.ndarray) -> np.ndarray:
    """Greedy upgrades that keep every budget, best loss reduction per normalised cost first."""
    s = _State(problem, gchoice)
    for _ in range(gchoice.size * problem.n_formats + 1):
        fits = np.all(s.total[:, None, None] + s.D <= 1 + _TOL, axis=0)
        ok = fits & (s.dloss < 0)
        if not ok.any():
            return s.g
        spend = np.maximum(np.maximum(s.D, 0).sum(axis=0), 1e-15)
        score = np.where(ok, -s.dloss / spend, -np.inf)
        s.move(*np.unravel_index(np.argmax(score), score.shape))
    return s.g


def repair_and_fill(problem: Problem, gchoice: np.ndarray, exact: Exact | None = None) -> np.ndarray:
    return fill(problem, repair(problem, gchoice, exact))
