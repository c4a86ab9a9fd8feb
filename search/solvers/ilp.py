"""Exact multiple-choice knapsack with HiGHS (scipy.optimize.milp): one binary per
(group, format), exactly one format per group, every budget as one linear row. HiGHS' dual
bound is the certificate: objective, lower bound and relative gap are reported."""
from __future__ import annotations

import numpy as np

from search.problem import InfeasibleError, Problem, Solution, relative_gap
from search.solvers.base import Solver
from search.solvers.repair import repair_and_fill

# scipy is imported where a problem is solved: the solver registry is read by every CLI command's
# --help and by the API process, which should not pay scipy's import for listing names.


def knapsack_constraints(problem: Problem, keep: np.ndarray | None = None) -> tuple[list, float]:
    """Constraints of the (relaxed or integer) program over flattened group × format variables
    (only the columns in ``keep`` when given), with each budget row divided by its limit so
    HiGHS sees numbers near one. Returns the constraints and the loss scale of the objective."""
    from scipy.optimize import LinearConstraint
    from scipy.sparse import csr_matrix, identity, kron
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
    """Exact solver. The LP relaxation (HiGHS) gives a bound and, after repair, an incumbent;
    reduced-cost fixing then removes every (group, format) whose LP reduced cost exceeds the
    incumbent's gap — no optimal policy can use it, since c·x ≥ LP + Σ rc_j·x_j for every
    feasible x — and dominated formats go too. The MILP that remains is tiny. ``mip_rel_gap``
    is HiGHS' stopping tolerance (0 = prove optimality); ``time_limit`` caps seconds, after
    which the best incumbent and its certified gap return."""

    name = "ilp"

    def __init__(self, mip_rel_gap: float = 1e-6, time_limit: float = 60.0):
        self.mip_rel_gap = mip_rel_gap
        self.time_limit = time_limit

    def _solve(self, problem: Problem) -> Solution:
        from scipy.optimize import Bounds, milp
        G, K = problem.group_loss.shape
        cons, scale = knapsack_constraints(problem)
        c = problem.group_loss.ravel() / scale
        keep, incumbent, info = self._reduce(problem, cons, c)
        keep = np.intersect1d(keep, np.flatnonzero(~dominated(problem).ravel()))
        if incumbent is not None:  # the incumbent's columns always survive; keep them explicitly
            keep = np.union1d(keep, np.arange(G) * K + incumbent)
        sub, _ = knapsack_constraints(problem, keep)
        res = milp(c[keep], constraints=sub, integrality=np.ones(keep.size), bounds=Bounds(0, 1),
                   options={"mip_rel_gap": self.mip_rel_gap, "time_limit": self.time_limit, "disp": False})
        if res.x is None and incumbent is None:
            raise InfeasibleError(f"no policy meets every budget at once ({problem.budgets}); HiGHS: {res.message}")
        gchoice = incumbent
        if res.x is not None:
            x = np.zeros(G * K)
            x[keep] = res.x
            cand = x.reshape(G, K).argmax(axis=1)
            if incumbent is None or problem.group_loss[np.arange(G), cand].sum() <= problem.group_loss[np.arange(G), incumbent].sum():
                gchoice = cand
        choice = problem.expand(gchoice)
        obj = problem.objective(choice)
        bounds = [b * scale for b in (getattr(res, "mip_dual_bound", None), info.get("lp_bound")) if b is not None and np.isfinite(b)]
        bound = min(max(bounds), obj) if bounds else None
        info.update(status=int(res.status), nodes=int(getattr(res, "mip_node_count", 0) or 0), variables=int(keep.size))
        info.pop("lp_bound", None)
        return Solution(choice, obj, self.name, bound, relative_gap(obj, bound), info=info)

    def _reduce(self, problem: Problem, cons, c: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, dict]:
        """Columns that may appear in an optimal policy, an incumbent, and the LP bound."""
        from scipy.optimize import linprog
        G, K = problem.group_loss.shape
        eq, *ub = cons
        kw = {"A_ub": ub[0].A, "b_ub": ub[0].ub} if ub else {}
        lp = linprog(c, A_eq=eq.A, b_eq=eq.ub, bounds=(0, 1), method="highs", **kw)
        if lp.status == 2:
            raise InfeasibleError(f"no policy meets every budget at once ({problem.budgets})")
        if lp.status != 0:
            return np.arange(G * K), None, {}
        try:
            inc = repair_and_fill(problem, lp.x.reshape(G, K).argmax(axis=1))
        except InfeasibleError:
            return np.arange(G * K), None, {"lp_bound": float(lp.fun)}
        upper = float(c.reshape(G, K)[np.arange(G), inc].sum())
        rc = c - eq.A.T @ lp.eqlin.marginals - (ub[0].A.T @ lp.ineqlin.marginals if ub else 0.0)
        slack = upper - float(lp.fun)
        keep = np.flatnonzero(rc <= slack + 1e-9 * max(1.0, abs(upper)) + 1e-12)
        return keep, inc, {"lp_bound": float(lp.fun), "fixed_by_reduced_cost": int(G * K - keep.size)}


def exact_choice(problem: Problem) -> np.ndarray:
    """The ILP's layer choice: the exact fallback the rounding solvers hand to repair."""
    return ILPSolver().solve(problem).choice
