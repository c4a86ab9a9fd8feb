"""Solver base class.

Lifecycle: the registry builds a solver from a job's ``solver_params`` with :meth:`from_params`
(every parameter checked without the model, so the API refuses a bad job at submission);
:meth:`check_quantizer` refuses a weight quantizer the solver cannot work with; once the layers
are known :meth:`check_budgets` refuses budgets outside the solver's search space and returns
that space; then ``solve(problem)`` is called once per problem and returns a :class:`Solution`
whose choice meets every budget and every tie group — or raises :class:`InfeasibleError`.
Solvers are pure: no I/O, no globals.

A solver with ``needs_table = False`` (the joint search) does not solve a sensitivity table: it
measures policies on the model itself, so the pipeline skips the sensitivity phase and runs the
solver's torch side instead of ``solve`` (registered under the solver's name:
workers/pipeline.py ``measuring_phases``).
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any

from search.budgets import CostModel
from search.budgets import check_budgets as check_format_budgets
from search.layers import TieGroups
from search.problem import Problem, Solution


class Solver(ABC):
    name: str = ""
    takes_params: bool = False  # whether a job may give it solver_params
    needs_table: bool = True    # False: it measures policies on the model instead of solving a table

    @classmethod
    def from_params(cls, params: dict[str, Any], seed: int, ties: list) -> "Solver":
        """The solver of a job: its ``solver_params`` (empty unless ``takes_params``), the job's
        seed and its tie patterns. Raises ValueError naming a parameter and its allowed range."""
        return cls()

    def check_quantizer(self, quantizer: str) -> None:
        """Refuse a weight quantizer (``rtn``, ``gptq``) this solver cannot work with."""

    def check_budgets(self, costs: CostModel, budgets: dict[str, float], ties: TieGroups | None = None) -> Any:
        """Refuse budgets no policy of the search space can meet (BudgetError with the feasible
        range). Returns the space searched beyond the formats of ``costs`` (None: just those)."""
        check_format_budgets(costs, budgets, ties)
        return None

    def solve(self, problem: Problem) -> Solution:
        """Solve and time; subclasses implement :meth:`_solve`."""
        t0 = time.perf_counter()
        sol = self._solve(problem)
        sol.seconds = time.perf_counter() - t0
        return sol

    @abstractmethod
    def _solve(self, problem: Problem) -> Solution:
        """Return a feasible solution for ``problem``."""
