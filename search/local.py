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
callables, so this is testable without torch."""
from __future__ import annotations

import math
import time
from itertools import zip_longest
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from search.refine import Judge, fitting_uniforms, reset_judge
from search.formats import Format
from search.problem import Problem

# measure(base choice, {layer: [format indices]}) → (values, stderr): an L×K array with the
# measured loss(base with layer → format) − loss(base) in the asked cells and NaN elsewhere
Measure = Callable[[np.ndarray, dict[int, list[int]]], tuple[np.ndarray, np.ndarray | None]]
Solve = Callable[[Problem], np.ndarray]


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


def operating_point(problem: Problem) -> int | None:
    """Index of the dearest uniform format that keeps every budget (None when none does)."""
    fits = fitting_uniforms(problem)
    return fits[0] if fits else None


def neighbours(formats: list[Format], cost_row: np.ndarray, k: int, direction: int = 0) -> list[int]:
    """The cells a layer in format ``k`` is measured in: one bit-level down (its dearest format
    there), one up (its cheapest), and at the same bit-width the nearest cheaper and dearer
    group size. With a one-group menu that is one step down and one up the bit ladder; with
    g32/g64/g128 it adds the neighbouring scale overheads, the finer trades the knapsack makes.
    ``direction`` +1 keeps only the dearer cells (a layer the solver would upgrade), -1 only the
    cheaper ones (one it would downgrade): the other side would not be used this round, and
    skipping it measures twice the rows in the same time."""
    levels = sorted({f.bits for f in formats})
    j = levels.index(formats[k].bits)
    at = {b: [i for i, f in enumerate(formats) if f.bits == b] for b in levels}
    out = set()
    if j > 0 and direction <= 0:
        out.add(max(at[levels[j - 1]], key=lambda i: cost_row[i]))
    if j + 1 < len(levels) and direction >= 0:
        out.add(min(at[levels[j + 1]], key=lambda i: cost_row[i]))
    same = [i for i in at[levels[j]] if i != k]
    below = [i for i in same if cost_row[i] < cost_row[k]]
    above = [i for i in same if cost_row[i] > cost_row[k]]
    if below and direction <= 0:
        out.add(max(below, key=lambda i: cost_row[i]))
    if above and direction >= 0:
        out.add(min(above, key=lambda i: cost_row[i]))
    return sorted(out)


def margin_sides(est: np.ndarray, cost: np.ndarray, base: np.ndarray, m: int,
                 exclude: set[int] = frozenset()) -> tuple[list[int], list[int]]:
    """The ``m`` layers with the best upgrade per bit and the ``m`` with the cheapest downgrade
    per bit from ``base`` under the estimate ``est`` (relative to ``base``): the rows the
    solver's next trade would touch, each side in order (best first)."""
    L = est.shape[0]
    rows = np.arange(L)
    dc = cost - cost[rows, base][:, None]
    up = np.where(dc > 1e-12, -est / np.where(dc > 1e-12, dc, 1.0), -np.inf).max(axis=1)
    down = np.where(dc < -1e-12, est / np.where(dc < -1e-12, -dc, 1.0), np.inf).min(axis=1)
    ups = [int(i) for i in np.argsort(-up, kind="stable") if np.isfinite(up[i]) and i not in exclude][:m]
    downs = [int(i) for i in np.argsort(down, kind="stable") if np.isfinite(down[i]) and i not in exclude][:m]
    return ups, downs


def proxy_scale(pairs: list[tuple[float, float]]) -> float:
    """Least-squares factor s with measured ≈ s · proxy (through the origin); 1 when unknown."""
    if not pairs:
        return 1.0
    p, q = np.array(pairs, dtype=float).T
    den = float(p @ p)
    s = float(p @ q) / den if den > 0 else 1.0
    return s if s > 0 and math.isfinite(s) else 1.0


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
    L, K = problem.loss.shape
    k0 = operating_point(problem)
    if k0 is None:
        raise ValueError("no uniform format keeps every budget: the operating-point loop needs one to start from")
    cost = problem.costs.matrix(next(iter(problem.budgets)))
    margin = max(4, L // 20) if margin is None else margin
    rows_idx = np.arange(L)
    proxy = problem.loss
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
    measured = np.full((L, K), np.nan)  # relative to ``base`` for rows measured at (a previous) base
    fresh: set[int] = set()             # rows measured at the current base
    pending: set[int] = set()           # rows a rejected candidate moved on older measurements
    # (proxy, measured) per direction: a second-order proxy misjudges bits given up (large
    # perturbations) and bits bought (small ones) by different factors, so each gets its own
    pairs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}  # key: the cell costs more than base
    result = LoopResult(base.copy(), formats[k0].label, uniform_loss, base_loss, began=began)
    judged: set[bytes] = {base.tobytes(), np.full(L, k0).tobytes()}
    per_cell: float | None = None  # seconds one measured cell took (known after the first round)
    judge_cells = 4.0  # a judgement costs about this many cells (one forward over the judge's samples)

    def estimate() -> np.ndarray:
        up = cost > cost[rows_idx, base][:, None]
        est = np.where(up, proxy_scale(pairs[True]), proxy_scale(pairs[False])) * (proxy - proxy[rows_idx, base][:, None])
        has = ~np.isnan(measured)
        est[has] = measured[has]
        return est

    def solve_est(only_measured: bool = False, no_up: set[int] | None = None) -> np.ndarray:
        """The solver's answer on the estimate; with ``only_measured`` every cell not measured
        is priced out, so a judged candidate moves only where a measurement says it pays, and
        the rows in ``no_up`` may not move to a dearer format (a shorter step)."""
        est = estimate()
        if only_measured:
            out = np.isnan(measured)
            if no_up:
                rows = np.array(sorted(no_up))
                out[rows] |= cost[rows] > cost[rows, base[rows]][:, None]
            out[rows_idx, base] = False
            # above every gain the measured cells could add up to, and no larger (HiGHS dislikes
            # coefficients many orders apart)
            kept = np.where(out, np.inf, est)
            gain = float(np.clip(-kept.min(axis=1), 0, None).sum())
            est[out] = 2.0 * gain + float(np.abs(est[~out]).max()) + 1e-12
        return np.asarray(solve(problem.with_loss(est)), dtype=np.int64)

    def recentre(cand: np.ndarray) -> None:
        """A row keeps its measurement relative to its own format (shifted where that format
        moved, NaN where the new cell was not measured); the context changed for every row, so
        rows are measured again when they matter."""
        for i in rows_idx:
            measured[i, :] = measured[i, :] - measured[i, cand[i]]

    def judged_entry(r: int, cand: np.ndarray, cells: int, step: str) -> tuple[dict, float]:
        est = estimate()
        entry = {"round": r, "step": step, "measured_rows": cells, "changed_rows": int((cand != base).sum()),
                 "predicted_delta": float(est[rows_idx, cand].sum()), "judge_loss": None, "accepted": False}
        result.rounds.append(entry)
        judged.add(cand.tobytes())
        loss = judge(cand)
        entry["judge_loss"] = loss if math.isfinite(loss) else None
        # the prediction gap a user reads: the local table's predicted change vs the judged one
        entry["judged_delta"] = loss - base_loss if math.isfinite(loss) else None
        entry["accepted"] = bool(loss < base_loss)
        return entry, loss

    for r in range(1, max_rounds + 1):
        if clock() >= deadline:
            result.stopped_by = "time"
            break
        cand = solve_est()
        changed = {int(i) for i in np.flatnonzero(cand != base)}
        est = estimate()
        # the solver's changes first (largest predicted effect first), then the margin, the best
        # upgrade and the cheapest downgrade in turn; at most ``max_rows`` per round, the rest
        # waits for the next round. A row is measured on the side it would move to.
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
        cells = {i: ks for i, ks in cells.items() if ks}
        # measured in chunks, the first small: a cell's cost is learnt before the round commits
        # to all its rows, and no round runs far past ``max_seconds`` (on a slow CPU one round of
        # 24 rows on whole SmolLM2 took 13 minutes)
        done: dict[int, list[int]] = {}
        left = list(cells)
        while left:
            room = math.inf
            if per_cell is not None and math.isfinite(deadline):  # leave time to judge what is measured
                room = (deadline - clock()) / per_cell - judge_cells
            chunk, n = {}, 0
            for i in left[: 4 if per_cell is None else 8]:
                if n + len(cells[i]) > room:
                    break
                chunk[i], n = cells[i], n + len(cells[i])
            if not chunk:
                break
            left = left[len(chunk):]
            tm = clock()
            vals, _ = measure(base.copy(), chunk)
            per_cell = (clock() - tm) / n
            for i, ks in chunk.items():
                measured[i, :] = np.nan
                measured[i, base[i]] = 0.0
                for k in ks:
                    measured[i, k] = vals[i, k]
                    pairs[bool(cost[i, k] > cost[i, base[i]])].append((float(proxy[i, k] - proxy[i, base[i]]), float(vals[i, k])))
                fresh.add(i)
            result.measured_cells += n
            done.update(chunk)
        if cells and not done:
            result.stopped_by = "time"
            break
        cells = done
        cand = solve_est(only_measured=True)
        if progress:
            progress(r, max_rounds, f"round {r}: {len(cells)} rows measured, {int((cand != base).sum())} layers change")
        if np.array_equal(cand, base) or cand.tobytes() in judged:
            result.rounds.append({"round": r, "step": "measure", "measured_rows": len(cells), "changed_rows": 0,
                                  "predicted_delta": 0.0, "judge_loss": None, "accepted": False})
            if cells:  # nothing measured pays yet; the next round measures more of what the solver wants
                continue
            result.stopped_by = "converged"
            break
        entry, loss = judged_entry(r, cand, len(cells), "solve")
        if not entry["accepted"]:
            stale = set(int(i) for i in np.flatnonzero(cand != base)) - fresh
            if stale:  # measured at an earlier policy: measure again here first
                pending |= stale
                continue
            # every change was measured at this policy and the whole step still lost: the local
            # table over-predicts a long step (the layers' errors interact), so shorten it, the
            # better half of its upgrades by measured gain per bit, until the judge agrees
            while clock() < deadline:
                est = estimate()
                up = [int(i) for i in np.flatnonzero(cost[rows_idx, cand] > cost[rows_idx, base])]
                if len(up) < 2:
                    break
                up.sort(key=lambda i: est[i, cand[i]] / (cost[i, cand[i]] - cost[i, base[i]]))
                short = solve_est(only_measured=True, no_up=set(range(L)) - set(up[: len(up) // 2]))
                if np.array_equal(short, base) or short.tobytes() in judged:
                    break
                cand = short
                entry, loss = judged_entry(r, cand, 0, "shorter")
                if entry["accepted"]:
                    break
            if not entry["accepted"]:
                result.stopped_by = "judge"
                break
        recentre(cand)
        fresh, pending = set(), set()
        base, base_loss = cand, loss
    else:
        result.stopped_by = "rounds"
    result.choice, result.final_loss, result.scale = base, base_loss, proxy_scale(pairs[True] + pairs[False])
    result.table = estimate()
    result.seconds = clock() - t0
    return result
