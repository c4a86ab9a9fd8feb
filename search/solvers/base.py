"""Solver base class.

Lifecycle: a solver is built with its parameters (``__init__``), then ``solve(problem)`` is
called once per problem and returns a :class:`Solution` whose choice meets every budget and
every tie group — or raises :class:`InfeasibleError`. Solvers are pure: no I/O, no globals.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod

from search.problem import Problem, Solution


class Solver(ABC):
    name: str = ""

    def solve(self, problem: Problem) -> Solution:
        """Solve and time; subclasses implement :meth:`_solve`."""
        t0 = time.perf_counter()
        sol = self._solve(problem)
        sol.seconds = time.perf_counter() - t0
        return sol

    @abstractmethod
    def _solve(self, problem: Problem) -> Solution:
        """Return a feasible solution for ``problem``."""
