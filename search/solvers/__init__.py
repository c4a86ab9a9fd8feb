"""Solver registry: name → Solver class. Adding a solver is one module plus one line here."""
from __future__ import annotations

from typing import Any

from search.solvers.base import Solver
from search.solvers.convex import ConvexSolver
from search.solvers.ilp import ILPSolver
from search.solvers.joint import JointSolver
from search.solvers.lp import LPSolver
from search.solvers.pareto import ParetoSolver

SOLVERS: dict[str, type[Solver]] = {
    "ilp": ILPSolver,
    "lp": LPSolver,
    "convex": ConvexSolver,
    "pareto": ParetoSolver,
    "joint": JointSolver,
}


def _lookup(name: str) -> type[Solver]:
    """The registered class; an unknown name is an error that lists the choices (refine runs
    after the solvers of a sensitivity table only)."""
    try:
        return SOLVERS[name]
    except KeyError:
        table = sorted(n for n, c in SOLVERS.items() if c.needs_table)
        measuring = "".join(f", {n}" for n, c in sorted(SOLVERS.items()) if not c.needs_table)
        raise ValueError(f"unknown solver {name!r}: choose from {', '.join(table)} (or 'refine' after one of them)"
                         f"{measuring}") from None


def get_solver(name: str, **params) -> Solver:
    """Instantiate a registered solver with keyword parameters (code that builds one directly)."""
    return _lookup(name)(**params)


def solver_for_job(name: str, params: dict[str, Any] | None, seed: int = 0, ties: list | None = None) -> Solver:
    """The solver of a job from its ``solver``, ``solver_params``, ``seed`` and tie patterns,
    every parameter checked (ValueError with what to change)."""
    cls = SOLVERS.get(name)
    if params and not (cls is not None and cls.takes_params):
        takers = [n for n, c in SOLVERS.items() if c.takes_params]
        raise ValueError(f"solver {name!r} takes no solver_params (only {' or '.join(map(repr, takers))} "
                         f"{'does' if len(takers) == 1 else 'do'})")
    return _lookup(name).from_params(dict(params or {}), seed, list(ties or []))
