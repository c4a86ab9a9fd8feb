"""The allocation problem every solver takes, and the solution every solver returns.

Tied layers (must share a format) are merged into one *group* whose loss and costs are the
members' sums; solvers work on groups and the result is expanded back to layers, so ties are
honoured by construction rather than by extra constraints."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from search.budgets import CostModel, within
from search.layers import TieGroups


class InfeasibleError(ValueError):
    """No policy meets every budget at once."""


@dataclass
class Problem:
    """Minimise Σ loss[l, choice[l]] subject to every budget, ties honoured."""

    loss: np.ndarray
    costs: CostModel
    budgets: dict[str, float]
    ties: TieGroups = field(default_factory=TieGroups)

    def __post_init__(self) -> None:
        self.loss = np.asarray(self.loss, dtype=np.float64)
        L = self.loss.shape[0]
        tied = {i for g in self.ties.groups for i in g}
        self.groups: list[list[int]] = [list(g) for g in self.ties.groups] + [[i] for i in range(L) if i not in tied]
        self.groups.sort(key=lambda g: g[0])
        self._order = np.concatenate(self.groups)
        self._starts = np.cumsum([0] + [len(g) for g in self.groups[:-1]])
        self.group_loss = self.group_sum(self.loss)
        self.group_cost = {m: self.group_sum(self.costs.matrix(m)) for m in self.budgets}

    def group_sum(self, matrix: np.ndarray) -> np.ndarray:
        """Per-layer rows summed within each group (vectorised: one reduceat, not a Python loop)."""
        return np.add.reduceat(matrix[self._order], self._starts, axis=0)

    def with_budgets(self, budgets: dict[str, float]) -> "Problem":
        """The same table, costs and ties under other limits, reusing the grouped arrays."""
        new = copy.copy(self)
        new.budgets = dict(budgets)
        new.group_cost = {m: self.group_cost[m] if m in self.group_cost else self.group_sum(self.costs.matrix(m))
                          for m in budgets}
        return new

    def with_loss(self, loss: np.ndarray) -> "Problem":
        """The same costs, budgets and ties with another loss table (grouped once more)."""
        new = copy.copy(self)
        new.loss = np.asarray(loss, dtype=np.float64)
        new.group_loss = new.group_sum(new.loss)
        return new

    @property
    def n_formats(self) -> int:
        return self.loss.shape[1]

    def expand(self, group_choice: np.ndarray) -> np.ndarray:
        """Group choice (one column per group) → layer choice."""
        choice = np.empty(self.loss.shape[0], dtype=np.int64)
        for g, k in zip(self.groups, group_choice):
            choice[g] = int(k)
        return choice

    def collapse(self, choice: np.ndarray) -> np.ndarray:
        """Layer choice → group choice; refuses a choice that splits a tie group."""
        out = []
        for g in self.groups:
            ks = set(int(choice[i]) for i in g)
            if len(ks) != 1:
                raise ValueError(f"choice breaks a tie group (layers {g} take formats {sorted(ks)})")
            out.append(ks.pop())
        return np.array(out, dtype=np.int64)

    def objective(self, choice: np.ndarray) -> float:
        return float(self.loss[np.arange(len(choice)), choice].sum())

    def group_totals(self, group_choice: np.ndarray) -> dict[str, float]:
        rows = np.arange(len(self.groups))
        return {m: float(M[rows, group_choice].sum()) for m, M in self.group_cost.items()}

    def feasible(self, choice: np.ndarray) -> bool:
        return within(self.costs.cost(choice), self.budgets)


@dataclass
class Solution:
    """A solver's answer: the layer → format-index choice and its certificate, if any.
    ``lower_bound`` is a proven bound on the best objective (None if the solver has none);
    ``gap`` = (objective − lower_bound) / max(|objective|, tiny)."""

    choice: np.ndarray
    objective: float
    solver: str
    lower_bound: float | None = None
    gap: float | None = None
    seconds: float = 0.0
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.solver, "objective": self.objective, "lower_bound": self.lower_bound,
                "gap": self.gap, "seconds": round(self.seconds, 6), **self.info}


def relative_gap(objective: float, bound: float | None) -> float | None:
    if bound is None:
        return None
    return max(0.0, (objective - bound) / max(abs(objective), 1e-12))
