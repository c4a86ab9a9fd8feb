"""The operating-point loop's local table (search/local.py): the loss change of every
(layer, format) cell relative to the current policy, measured where a measurement was made at
this or an earlier policy, else the proxy's value rescaled to the measurements so far. It also
answers the loop's questions about itself: which cells to measure next, and what the solver
picks when every unmeasured cell is priced out."""
from __future__ import annotations

from collections.abc import Callable
from itertools import zip_longest

import numpy as np

from search.formats import Format
from search.local_cells import margin_sides, neighbours, proxy_scale
from search.problem import Problem

Solve = Callable[[Problem], np.ndarray]


class LocalTable:
    """State: ``base`` (the current policy), ``measured`` (relative to ``base`` for rows
    measured at it or at an earlier base; NaN elsewhere), ``fresh`` (rows measured at the
    current base), ``pending`` (rows a rejected candidate moved on older measurements) and the
    (proxy, measured) pairs the proxy is rescaled by."""

    def __init__(self, problem: Problem, solve: Solve, base: np.ndarray):
        self.problem, self._solve = problem, solve
        self.proxy = problem.loss
        self.cost = problem.costs.matrix(next(iter(problem.budgets)))
        L, K = self.proxy.shape
        self.rows = np.arange(L)
        self.base = base
        self.measured = np.full((L, K), np.nan)
        self.fresh: set[int] = set()
        self.pending: set[int] = set()
        # (proxy, measured) per direction: a second-order proxy misjudges bits given up (large
        # perturbations) and bits bought (small ones) by different factors, so each gets its own
        self.pairs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}  # key: the cell costs more than base

    def estimate(self) -> np.ndarray:
        """The L×K table relative to ``base``: measured cells as measured, the rest the proxy's
        change, scaled by the fit of its own direction (bits bought or given up)."""
        rows, cost, proxy, base = self.rows, self.cost, self.proxy, self.base
        up = cost > cost[rows, base][:, None]
        est = np.where(up, proxy_scale(self.pairs[True]), proxy_scale(self.pairs[False])) * (proxy - proxy[rows, base][:, None])
        has = ~np.isnan(self.measured)
        est[has] = self.measured[has]
        return est

    def solve(self, only_measured: bool = False, no_up: set[int] | None = None) -> np.ndarray:
        """The solver's answer on the estimate; with ``only_measured`` every cell not measured
        is priced out, so a judged candidate moves only where a measurement says it pays, and
        the rows in ``no_up`` may not move to a dearer format (a shorter step)."""
        est = self.estimate()
        if only_measured:
            cost, base = self.cost, self.base
            out = np.isnan(self.measured)
            if no_up:
                rows = np.array(sorted(no_up))
                out[rows] |= cost[rows] > cost[rows, base[rows]][:, None]
            out[self.rows, base] = False
            # above every gain the measured cells could add up to, and no larger (HiGHS dislikes
            # coefficients many orders apart)
            kept = np.where(out, np.inf, est)
            gain = float(np.clip(-kept.min(axis=1), 0, None).sum())
            est[out] = 2.0 * gain + float(np.abs(est[~out]).max()) + 1e-12
        return np.asarray(self._solve(self.problem.with_loss(est)), dtype=np.int64)

    def cells_to_measure(self, cand: np.ndarray, formats: list[Format], margin: int,
                         max_rows: int | None) -> dict[int, list[int]]:
        """{row: formats} to measure at ``base`` before judging ``cand``: the solver's changes
        first (largest predicted effect first), then the margin, the best upgrade and the
        cheapest downgrade in turn; at most ``max_rows`` rows, the rest waits for the next
        round. A row is measured on the side it would move to."""
        base, cost, fresh, pending = self.base, self.cost, self.fresh, self.pending
        changed = {int(i) for i in np.flatnonzero(cand != base)}
        est = self.estimate()
        first = sorted(pending - fresh, key=lambda i: -abs(est[i, cand[i]]) if i in changed else 0.0)
        first += sorted(changed - fresh - pending, key=lambda i: -abs(est[i, cand[i]]))
        side = {i: int(np.sign(cost[i, cand[i]] - cost[i, base[i]])) if i in changed else 0 for i in first}
        ups, downs = margin_sides(est, cost, base, margin, exclude=fresh | changed)
        for pair in zip_longest(ups, downs):
            for i, d in zip(pair, (1, -1)):
                if i is not None:
                    side[i] = d if side.get(i, d) == d else 0
        todo = list(side)
        todo = todo[:max_rows] if max_rows else todo
        cells = {i: sorted((set(neighbours(formats, cost[i], int(base[i]), side[i])) | {int(cand[i])}) - {int(base[i])})
                 for i in todo}
        return {i: ks for i, ks in cells.items() if ks}

    def record(self, chunk: dict[int, list[int]], vals: np.ndarray) -> None:
        """Measurements at ``base``: each measured row replaces its estimate and joins the fit."""
        cost, proxy, base = self.cost, self.proxy, self.base
        for i, ks in chunk.items():
            self.measured[i, :] = np.nan
            self.measured[i, base[i]] = 0.0
            for k in ks:
                self.measured[i, k] = vals[i, k]
                self.pairs[bool(cost[i, k] > cost[i, base[i]])].append((float(proxy[i, k] - proxy[i, base[i]]),
                                                                        float(vals[i, k])))
            self.fresh.add(i)

    def move_to(self, cand: np.ndarray) -> None:
        """Re-centre on an accepted candidate. A row keeps its measurement relative to its own
        format (shifted where that format moved, NaN where the new cell was not measured); the
        context changed for every row, so rows are measured again when they matter."""
        for i in self.rows:
            self.measured[i, :] = self.measured[i, :] - self.measured[i, cand[i]]
        self.fresh, self.pending = set(), set()
        self.base = cand

    def scale(self) -> float:
        """The proxy's overall factor to the measurements (both directions together)."""
        return proxy_scale(self.pairs[True] + self.pairs[False])
