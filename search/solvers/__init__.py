"""Solver registry: name → Solver class. Adding a solver is one module plus one line here."""
from __future__ import annotations

from search.solvers.base import Solver
from search.solvers.convex import ConvexSolver
from search.solvers.ilp import ILPSolver
from search.solvers.lp import LPSolver
from search.solvers.pareto import ParetoSolver

SOLVERS: dict[str, type[Solver]] = {
    "ilp": ILPSolver,
    "lp": LPSolver,
    "convex": ConvexSolver,
    "pareto": ParetoSolver,
}


def get_solver(name: str, **params) -> Solver:
    """Instantiate a registered solver; an unknown name is an error that lists the choices."""
    try:
        cls = SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}: choose from {', '.join(sorted(SOLVERS))} (or 'refine' after one of them)") from None
    return cls(**params)
