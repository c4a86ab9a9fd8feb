"""The predicted-loss / cost front for many budgets from one sensitivity table.

Multiple-choice knapsack structure makes this cheap: on the primary metric, each group's lower
convex hull of (cost, loss) gives segments; walking all segments in order of loss saved per unit
of cost (Dantzig's greedy) visits every policy on the global lower convex hull, and interpolating
the next segment gives the LP relaxation's optimum — a proven lower bound — at any budget. Each
requested budget takes the last hull policy within it, then a greedy fill that respects every
budget (repair first if a secondary budget is violated). Milliseconds for thousands of layers;
``exact=True`` solves the ILP at each point instead."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from search.budgets import group_min_cost
from search.problem import InfeasibleError, Problem, Solution, relative_gap
from search.solvers.base import Solver
from search.solvers.ilp import ILPSolver
from search.solvers.ilp import exact_choice
from search.solvers.repair import repair_and_fill


def _lower_hull(cost: np.ndarray, loss: np.ndarray) -> list[int]:
    """Indices of the lower-left convex hull, from cheapest to dearest, loss strictly falling."""
    order = np.lexsort((loss, cost))
    hull: list[int] = []
    for k in order:
        if hull and loss[k] >= loss[hull[-1]]:
            continue  # dominated: costs at least as much, loses no less
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b when it lies on or above the segment a→k
            if (loss[b] - loss[a]) * (cost[k] - cost[a]) >= (loss[k] - loss[a]) * (cost[b] - cost[a]):
                hull.pop()
            else:
                break
        hull.append(int(k))
    return hull


@dataclass
class HullWalk:
    """The global hull as a start policy plus segments sorted by efficiency."""

    start: np.ndarray          # group choice at minimum primary cost
    seg_group: np.ndarray      # group each segment moves
    seg_to: np.ndarray         # format index it moves to
    cum_cost: np.ndarray       # primary cost after applying segments[: i + 1]
    cum_loss: np.ndarray
    base_cost: float
    base_loss: float

    def prefix(self, limit: float) -> tuple[np.ndarray, float]:
        """Group choice of the last hull policy within ``limit`` and the LP lower bound there."""
        n = int(np.searchsorted(self.cum_cost, limit * (1 + 1e-12), side="right"))
        g = self.start.copy()
        for grp, k in zip(self.seg_group[:n], self.seg_to[:n]):
            g[grp] = k
        c0 = self.cum_cost[n - 1] if n else self.base_cost
        l0 = self.cum_loss[n - 1] if n else self.base_loss
        if n < len(self.cum_cost):
            dc = self.cum_cost[n] - c0
            frac = 0.0 if dc <= 0 else min(1.0, max(0.0, (limit - c0) / dc))
            bound = l0 + frac * (self.cum_loss[n] - l0)
        else:
            bound = l0
        return g, float(bound)


def hull_walk(problem: Problem, metric: str) -> HullWalk:
    L = problem.group_loss
    C = problem.group_cost[metric] if metric in problem.group_cost else problem.group_sum(problem.costs.matrix(metric))
    start = np.empty(len(L), dtype=np.int64)
    segs = []
    for g in range(len(L)):
        h = _lower_hull(C[g], L[g])
        start[g] = h[0]
        for a, b in zip(h, h[1:]):
            segs.append(((L[g, b] - L[g, a]) / (C[g, b] - C[g, a]), g, b, C[g, b] - C[g, a], L[g, b] - L[g, a]))
    segs.sort(key=lambda s: s[0])
    rows = np.arange(len(L))
    base_cost, base_loss = float(C[rows, start].sum()), float(L[rows, start].sum())
    arr = np.array([(s[1], s[2], s[3], s[4]) for s in segs]) if segs else np.zeros((0, 4))
    return HullWalk(start, arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64),
                    base_cost + np.cumsum(arr[:, 2]), base_loss + np.cumsum(arr[:, 3]), base_cost, base_loss)


def front(problem: Problem, metric: str, limits: list[float], exact: bool = False) -> list[dict]:
    """One point per limit on ``metric`` (other budgets of ``problem`` held). Each point has
    the policy's cost under every metric, its predicted loss, a lower bound and the gap.
    Limits are visited in ascending order and a policy found for a smaller limit is kept when
    the greedy finds worse for a larger one (it is feasible there too), so the front is monotone."""
    points: dict[int, dict] = {}
    walk = None if exact else hull_walk(problem.with_budgets({**problem.budgets, metric: 1.0}), metric)
    best: tuple[float, np.ndarray] | None = None
    for i in sorted(range(len(limits)), key=lambda j: limits[j]):
        limit = float(limits[i])
        sub = problem.with_budgets({**problem.budgets, metric: limit})
        try:
            if exact:
                sol = ILPSolver().solve(sub)
                choice, bound = sol.choice, sol.lower_bound
            else:
                g, bound = walk.prefix(limit)
                choice = sub.expand(repair_and_fill(sub, g, exact_choice))
        except InfeasibleError:
            points[i] = {"limit": limit, "feasible": False}
            continue
        obj = sub.objective(choice)
        if best is not None and best[0] < obj:
            obj, choice = best
        best = (obj, choice)
        points[i] = {"limit": limit, "feasible": True, "cost": problem.costs.cost(choice), "loss": obj,
                     "lower_bound": bound, "gap": relative_gap(obj, bound), "choice": choice.tolist()}
    return [points[i] for i in range(len(limits))]


class ParetoSolver(Solver):
    """Returns the front's policy at the problem's own budget, with the front over the whole
    feasible range of the first budget metric attached (``info['front']``)."""

    name = "pareto"

    def __init__(self, n_points: int = 25, exact: bool = False):
        self.n_points = n_points
        self.exact = exact

    def _solve(self, problem: Problem) -> Solution:
        metric, limit = next(iter(problem.budgets.items()))
        lo = group_min_cost(problem.costs.matrix(metric), problem.ties)
        hi = float(problem.costs.matrix(metric).max(axis=1).sum())
        pts = front(problem, metric, [limit, *np.linspace(lo, hi, self.n_points)], self.exact)
        own = pts.pop(0)
        if not own["feasible"]:
            raise InfeasibleError(f"no policy meets every budget at once ({problem.budgets})")
        for p in pts:
            p.pop("choice", None)
        choice = np.array(own["choice"], dtype=np.int64)
        return Solution(choice, own["loss"], self.name, own["lower_bound"], own["gap"],
                        info={"front_metric": metric, "front": pts})
