"""Sensitivities measured where the policy will live, and a loop that corrects them (issue 16 §3).

An additive table measured one layer at a time from the float model mis-predicts what happens
when every layer is quantized together, and measuring every (layer, format) cell in context is
hours on a whole LM. The loop measures only the cells the solver needs, around the policy it is
about to return:

1. Start at the *operating point*: the dearest uniform policy that keeps every budget (the
   uniform format nearest the budget), or at the proxy's own solution when the judge finds that
   better (at gentle budgets a second-order table already beats uniform). The job's proxy table,
   shifted so the starting policy scores 0, is the first estimate.
2. Solve with the exact ILP on the estimate. The rows it changes (largest predicted effect
   first), plus the layers at the margin of its trade-off (the best remaining upgrades per bit
   and the cheapest downgrades per bit), are measured *at the current policy*: every other layer
   stays in its current format while one layer moves to a neighbouring format (one bit-level
   down or up, the next group size, and the solver's pick). Measured rows replace the estimate;
   unmeasured rows keep the proxy's values, rescaled by least squares to the measurements so
   far, one factor for bits bought and one for bits given up (a second-order proxy misjudges
   large and small perturbations differently).
3. Re-solve with every unmeasured cell priced out, so the candidate moves only where a
   measurement says it pays, and ask the held-apart judge. A better candidate becomes the new
   current policy (the table is re-centred on it) and the loop goes on; a worse one whose
   changes were all measured at this policy ends the loop (the local model is as good as it
   gets), else its stale rows are measured again first.

The result is never worse than the operating point by the judge, which is a uniform policy
that fits the budget: the loop starts there. Pure numpy: ``measure`` and ``judge`` are
callables, so this is testable without torch. The cell choices and the proxy's rescaling are in
search/local_cells.py, the local table in search/local_table.py; this module runs the rounds."""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from search.formats import Format
from search.local_cells import margin_sides, neighbours, operating_point, proxy_scale
from search.local_table import LocalTable, Solve
from search.problem import Problem
from search.refine import Judge, reset_judge

# measure(base choice, {layer: [format indices]}) → (values, stderr): an L×K array with the
# measured loss(base with layer → format) − loss(base) in the asked cells and NaN elsewhere
Measure = Callable[[np.ndarray, dict[int, list[int]]], tuple[np.ndarray, np.ndarray | None]]
JUDGE_CELLS = 4.0  # a judgement costs about this many cells (one forward over the judge's samples)

__all__ = ["LoopResult", "Measure", "Solve", "margin_sides", "neighbours", "operating_point", "operating_point_loop",
           "proxy_scale"]


@dataclass
class LoopResult:
    choice: np.ndarray
    start: str                    # the operating point's format label
    start_loss: float             # the judge's loss of that uniform policy: what the loop must beat
    final_loss: float
    rounds: list[dict] = field(default_factory=list)
    measured_cells: int = 0
    stopped_by: str = "converged"  # "converged" | "judge" | "rounds" | "time"
    scale: float = 1.0
    seconds: float = 0.0
    began: str = "uniform"        # "solver" when the proxy's solution judged better and the loop began there
    table: np.ndarray | None = None  # the final local estimate, relative to ``choice`` (orders refine's moves)

    def to_dict(self) -> dict:
        return {"start": self.start, "began": self.began, "start_measured": self.start_loss, "final_measured": self.final_loss,
                "measured_cells": self.measured_cells, "stopped_by": self.stopped_by, "proxy_scale": self.scale,
                "seconds": round(self.seconds, 3), "n_rounds": max((e["round"] for e in self.rounds), default=0),
                "rounds": self.rounds}


def operating_point_loop(problem: Problem, formats: list[Format], measure: Measure, judge: Judge, solve: Solve,
                         max_rounds: int = 50, margin: int | None = None, max_rows: int | None = 24,
                         max_seconds: float | None = None, start: np.ndarray | None = None,
                         progress: Callable[[int, int, str], None] | None = None,
                         clock: Callable[[], float] = time.monotonic) -> LoopResult:
    """Measure-solve-judge rounds from the operating point (see the module docstring).
    ``margin`` layers on each side of the trade-off are measured besides the changed ones
    (default max(4, L/20)); ``max_rows`` caps the rows measured per round, and once a cell's cost
    is known, a round measures no more rows than the time left allows (so the loop ends near
    ``max_seconds``, not a whole round after it)."""
    t0 = clock()
    deadline = math.inf if max_seconds is None else t0 + max_seconds
    L = problem.loss.shape[0]
    k0 = operating_point(problem)
    if k0 is None:
        raise ValueError("no uniform format keeps every budget: the operating-point loop needs one to start from")
    margin = max(4, L // 20) if margin is None else margin
    loop = _Loop(problem, formats, measure, judge, solve, k0, start, clock, deadline)
    for r in range(1, max_rounds + 1):
        stop = loop.round(r, max_rounds, margin, max_rows, progress)
        if stop is not None:
            loop.result.stopped_by = stop
            break
    else:
        loop.result.stopped_by = "rounds"
    result, table = loop.result, loop.table
    result.choice, result.final_loss, result.scale = table.base, loop.base_loss, table.scale()
    result.table = table.estimate()
    result.seconds = clock() - t0
    return result


class _Loop:
    """One run of the loop: the local table, the judge's loss of its current policy, the
    candidates judged so far (never judged twice) and the time one measured cell takes."""

    def __init__(self, problem: Problem, formats: list[Format], measure: Measure, judge: Judge, solve: Solve,
                 k0: int, start: np.ndarray | None, clock: Callable[[], float], deadline: float):
        self.formats, self.measure, self.judge = formats, measure, judge
        self.clock, self.deadline = clock, deadline
        L = problem.loss.shape[0]
        base = np.full(L, k0)
        reset_judge(judge)
        base_loss = judge(base)
        uniform_loss, began = base_loss, "uniform"
        if start is not None and problem.feasible(start) and not np.array_equal(start, base):
            # the proxy's own solution may already be better than uniform (a second-order table is
            # good at gentle budgets): start from whichever the judge prefers
            loss = judge(np.asarray(start, dtype=np.int64))
            if loss < base_loss:
                base, base_loss, began = np.asarray(start, dtype=np.int64).copy(), loss, "solver"
        self.table = LocalTable(problem, solve, base)
        self.base_loss = base_loss
        self.result = LoopResult(base.copy(), formats[k0].label, uniform_loss, base_loss, began=began)
        self.judged: set[bytes] = {base.tobytes(), np.full(L, k0).tobytes()}
        self.per_cell: float | None = None  # seconds one measured cell took (known after the first round)

    def round(self, r: int, max_rounds: int, margin: int, max_rows: int | None,
              progress: Callable[[int, int, str], None] | None) -> str | None:
        """Measure, solve, judge: None to go on, else why the loop stops."""
        if self.clock() >= self.deadline:
            return "time"
        t = self.table
        cells = t.cells_to_measure(t.solve(), self.formats, margin, max_rows)
        done = self.measure_round(cells)
        if cells and not done:
            return "time"
        cand = t.solve(only_measured=True)
        if progress:
            progress(r, max_rounds, f"round {r}: {len(done)} rows measured, {int((cand != t.base).sum())} layers change")
        if np.array_equal(cand, t.base) or cand.tobytes() in self.judged:
            self.result.rounds.append({"round": r, "step": "measure", "measured_rows": len(done), "changed_rows": 0,
                                       "predicted_delta": 0.0, "judge_loss": None, "accepted": False})
            # nothing measured pays yet; the next round measures more of what the solver wants
            return None if done else "converged"
        entry, loss = self.judge_step(r, cand, len(done), "solve")
        if not entry["accepted"]:
            stale = set(int(i) for i in np.flatnonzero(cand != t.base)) - t.fresh
            if stale:  # measured at an earlier policy: measure again here first
                t.pending |= stale
                return None
            cand, entry, loss = self.shorten(r, cand, entry, loss)
            if not entry["accepted"]:
                return "judge"
        t.move_to(cand)
        self.base_loss = loss
        return None

    def measure_round(self, cells: dict[int, list[int]]) -> dict[int, list[int]]:
        """Measure ``cells`` at the current policy in chunks, the first small: a cell's cost is
        learnt before the round commits to all its rows, and no round runs far past the
        deadline (on a slow CPU one round of 24 rows on whole SmolLM2 took 13 minutes).
        Returns the cells measured."""
        done: dict[int, list[int]] = {}
        left = list(cells)
        while left:
            room = math.inf
            if self.per_cell is not None and math.isfinite(self.deadline):  # leave time to judge what is measured
                room = (self.deadline - self.clock()) / self.per_cell - JUDGE_CELLS
            chunk, n = {}, 0
            for i in left[: 4 if self.per_cell is None else 8]:
                if n + len(cells[i]) > room:
                    break
                chunk[i], n = cells[i], n + len(cells[i])
            if not chunk:
                break
            left = left[len(chunk):]
            tm = self.clock()
            vals, _ = self.measure(self.table.base.copy(), chunk)
            self.per_cell = (self.clock() - tm) / n
            self.table.record(chunk, vals)
            self.result.measured_cells += n
            done.update(chunk)
        return done

    def judge_step(self, r: int, cand: np.ndarray, cells: int, step: str) -> tuple[dict, float]:
        """Ask the judge about ``cand`` and log the round: the prediction gap a user reads is the
        local table's predicted change against the judged one."""
        t = self.table
        est = t.estimate()
        entry = {"round": r, "step": step, "measured_rows": cells, "changed_rows": int((cand != t.base).sum()),
                 "predicted_delta": float(est[t.rows, cand].sum()), "judge_loss": None, "accepted": False}
        self.result.rounds.append(entry)
        self.judged.add(cand.tobytes())
        loss = self.judge(cand)
        entry["judge_loss"] = loss if math.isfinite(loss) else None
        entry["judged_delta"] = loss - self.base_loss if math.isfinite(loss) else None
        entry["accepted"] = bool(loss < self.base_loss)
        return entry, loss

    def shorten(self, r: int, cand: np.ndarray, entry: dict, loss: float) -> tuple[np.ndarray, dict, float]:
        """Every change was measured at this policy and the whole step still lost: the local
        table over-predicts a long step (the layers' errors interact), so shorten it, the better
        half of its upgrades by measured gain per bit, until the judge agrees (or time is up)."""
        t = self.table
        L = len(t.rows)
        while self.clock() < self.deadline:
            est = t.estimate()
            up = [int(i) for i in np.flatnonzero(t.cost[t.rows, cand] > t.cost[t.rows, t.base])]
            if len(up) < 2:
                break
            up.sort(key=lambda i: est[i, cand[i]] / (t.cost[i, cand[i]] - t.cost[i, t.base[i]]))
            short = t.solve(only_measured=True, no_up=set(range(L)) - set(up[: len(up) // 2]))
            if np.array_equal(short, t.base) or short.tobytes() in self.judged:
                break
            cand = short
            entry, loss = self.judge_step(r, cand, 0, "shorter")
            if entry["accepted"]:
                break
        return cand, entry, loss
