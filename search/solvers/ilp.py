"""Exact multiple-choice knapsack with HiGHS (scipy.optimize.milp): one binary per
(group, format), exactly one format per group, every budget as one linear row. HiGHS' dual
bound is the certificate: objective, lower bound and relative gap are reported."""
from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_matrix, kron, identity

from search.problem import InfeasibleError, Problem, Solution, relative_gap
from search.solvers.base import Solver


def knapsack_constraints(problem: Problem, keep: np.ndarray | None = None) -> tuple[list[LinearConstraint], float]:
    """Constraints of the (relaxed or integer) program over flattened group × format variables
    (only the columns in ``keep`` when given), with each budget row divided by its limit so
    HiGHS sees numbers near one. Returns the constraints and the loss scale of the objective."""
    G, K = problem.group_loss.shape
    one_per_group = kron(identity(G, format="csr"), np.ones((1, K)), format="csc")
    rows = [problem.group_cost[m].ravel() / lim for m, lim in problem.budgets.items()]
    if keep is not None:
        one_per_group = one_per_group[:, keep]
        rows = [r[keep] for r in rows]
    cons = [LinearConstraint(one_per_group.tocsr(), 1.0, 1.0)]
    if rows:
        cons.append(LinearConstraint(csr_matrix(np.stack(rows)), -np.inf, 1.0 + 1e-9))
    scale = float(np.abs(problem.group_loss).max()) or 1.0
    return cons, scale


def dominated(problem: Problem) -> np.ndarray:
    """G×K mask of formats that another format of the same group beats on loss and on every
    budget metric (no worse anywhere, better somewhere). Fixing them to 0 is exact and makes
    HiGHS' search far smaller on real tables."""
    stack = np.stack([problem.group_loss, *problem.group_cost.values()])  # (M, G, K)
    le = np.all(stack[:, :, :, None] <= stack[:, :, None, :], axis=0)    # j no worse than k, [g, j, k]
    lt = np.any(stack[:, :, :, None] < stack[:, :, None, :], axis=0)
    dom = le & lt
    return dom.any(axis=1)


class ILPSolver(Solver):
    """Exact solver. ``mip_rel_gap`` is the optimality tolerance HiGHS stops at (0 = prove
    optimality); ``time_limit`` caps seconds, after which the best incumbent and its gap return."""

    name = "ilp"

    def __init__(self, mip_rel_gap: float = 1e-6, time_limit: float = 60.0):
        self.mip_rel_gap = mip_rel_gap
        self.time_limit = time_limit

    def _solve(self, problem: Problem) -> Solution:
        G, K = problem.group_loss.shape
        keep = np.flatnonzero(~dominated(problem).ravel())
        cons, scale = knapsack_constraints(problem, keep)
        c = problem.group_loss.ravel()[keep] / scale
        res = milp(c, constraints=cons, integrality=np.ones(keep.size), bounds=Bounds(0, 1),
                   options={"mip_rel_gap": self.mip_rel_gap, "time_limit": self.time_limit, "disp": False,
                            # after dominance pruning HiGHS' presolve costs more than it saves
                            "presolve": False})
        if res.x is None:
            raise InfeasibleError(f"no policy meets every budget at once ({problem.budgets}); HiGHS: {res.message}")
        x = np.zeros(G * K)
        x[keep] = res.x
        gchoice = x.reshape(G, K).argmax(axis=1)
        choice = problem.expand(gchoice)
        obj = problem.objective(choice)
        bound = getattr(res, "mip_dual_bound", None)
        bound = None if bound is None or not np.isfinite(bound) else min(float(bound) * scale, obj)
        return Solution(choice, obj, self.name, bound, relative_gap(obj, bound),
                        info={"status": int(res.status), "nodes": int(getattr(res, "mip_node_count", 0) or 0)})
