"""OMPQ's linear program, generalised to any sensitivity table.

OMPQ maximises Σ_i x_i·w_i over continuous bit-widths under a size budget. Over a table, the
continuous relaxation of the multiple-choice knapsack (x[g, k] ∈ [0, 1], Σ_k x[g, k] = 1) is the
same program: with OMPQ's table (loss linear in bits) its vertices are OMPQ's solutions. We
solve it with HiGHS, round each group to its heaviest format, then repair (never over budget)
and fill the slack greedily. The LP optimum is a valid lower bound for every integer policy,
so the gap is a certificate here too."""
from __future__ import annotations

import numpy as np

from search.problem import InfeasibleError, Problem, Solution, relative_gap
from search.solvers.base import Solver
from search.solvers.ilp import knapsack_constraints
from search.solvers.ilp import exact_choice
from search.solvers.repair import repair_and_fill


def _as_linprog(cons) -> dict:
    eq, *ub = cons
    out = {"A_eq": eq.A, "b_eq": eq.ub}
    if ub:
        out.update(A_ub=ub[0].A, b_ub=ub[0].ub)
    return out


class LPSolver(Solver):
    name = "lp"

    def _solve(self, problem: Problem) -> Solution:
        from scipy.optimize import linprog  # where it solves: listing the registry stays scipy-free
        G, K = problem.group_loss.shape
        cons, scale = knapsack_constraints(problem)
        res = linprog(problem.group_loss.ravel() / scale, bounds=(0, 1), method="highs", **_as_linprog(cons))
        if res.status != 0:
            raise InfeasibleError(f"no policy meets every budget at once ({problem.budgets}); HiGHS: {res.message}")
        x = res.x.reshape(G, K)
        fractional = int(np.sum(np.max(x, axis=1) < 1 - 1e-6))
        gchoice = repair_and_fill(problem, x.argmax(axis=1), exact_choice)
        choice = problem.expand(gchoice)
        obj = problem.objective(choice)
        bound = min(float(res.fun) * scale, obj)
        return Solution(choice, obj, self.name, bound, relative_gap(obj, bound),
                        info={"fractional_groups": fractional})
