"""Refinement judged by *measured* loss: the step that accounts for interactions between
layers, which every additive allocator (HAWQ, OMPQ, ModelOpt, our ILP) ignores.

Starting from a solved policy, moves are pairs "one group one step up, another one step down"
(plus single steps up when slack allows) that keep every budget. The proxy only *orders* the
candidates — near-ties first, where interactions can tip the balance; the judge (a callable that
measures the real loss of a policy on calibration-source samples) decides. First improvement is accepted;
the search stops when ``max_evals`` judgements are spent, when ``max_seconds`` of wall time have
passed (checked between judgements) or when no untried move is left; the result says which.

The judge should not read the samples the table was measured on: the table's noise then
decides which moves look good, and gains on those samples do not carry over to held-out data.
A judge may answer ``inf`` for a candidate it gave up on (see proxies.evaluate.RacingJudge)."""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from search.budgets import within
from search.problem import Problem

Judge = Callable[[np.ndarray], float]  # choice (format index per layer) → measured loss


@runtime_checkable
class StatefulJudge(Protocol):
    """A judge that keeps state between calls (the racing judge remembers the best policy it
    measured, to stop a worse one early): each search starts it afresh with ``reset``."""

    def __call__(self, choice: np.ndarray) -> float: ...

    def reset(self) -> None: ...


def reset_judge(judge: Judge) -> Judge:
    """``judge``, reset when it is stateful: a search must not race against another's best."""
    if isinstance(judge, StatefulJudge):
        judge.reset()
    return judge


@dataclass
class RefineResult:
    choice: np.ndarray
    start_loss: float
    final_loss: float
    evals: int
    accepted: int
    history: list[dict] = field(default_factory=list)
    stopped_by: str = "converged"  # "evals" | "time" | "patience" | "converged" (no untried move improves)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"start_measured": self.start_loss, "final_measured": self.final_loss, "evals": self.evals,
                "accepted": self.accepted, "stopped_by": self.stopped_by, "seconds": round(self.seconds, 3),
                "history": self.history}


def _ladders(problem: Problem, metric: str) -> np.ndarray:
    """Per group, format indices ordered from cheapest to dearest on ``metric``."""
    return np.argsort(problem.group_cost[metric], axis=1, kind="stable")


def candidate_moves(problem: Problem, gchoice: np.ndarray, metric: str) -> list[tuple[float, tuple]]:
    """Budget-feasible moves from ``gchoice`` with their proxy-predicted loss change."""
    ladder = _ladders(problem, metric)
    pos = np.array([int(np.where(ladder[g] == gchoice[g])[0][0]) for g in range(len(gchoice))])
    K = problem.n_formats
    ups = [(g, ladder[g][pos[g] + 1]) for g in range(len(gchoice)) if pos[g] + 1 < K]
    downs = [(g, ladder[g][pos[g] - 1]) for g in range(len(gchoice)) if pos[g] > 0]
    totals = problem.group_totals(gchoice)
    C, Ls = problem.group_cost, problem.group_loss
    moves = []

    def fits(changes) -> bool:
        for m, lim in problem.budgets.items():
            t = totals[m] + sum(C[m][g, k] - C[m][g, gchoice[g]] for g, k in changes)
            if t > lim * (1 + 1e-9):
                return False
        return True

    def predicted(changes) -> float:
        return float(sum(Ls[g, k] - Ls[g, gchoice[g]] for g, k in changes))

    for up in ups:
        if fits([up]):
            moves.append((predicted([up]), (up,)))
        for down in downs:
            if down[0] != up[0] and fits([up, down]):
                moves.append((predicted([up, down]), (up, down)))
    moves.sort(key=lambda m: m[0])
    return moves


def move_key(gchoice: np.ndarray, changes: tuple) -> frozenset:
    """A move's identity: which groups go from which format to which."""
    return frozenset((int(g), int(gchoice[g]), int(k)) for g, k in changes)


def fresh_first(moves: list[tuple[float, tuple]], lost: set[frozenset], gchoice: np.ndarray) -> list[tuple[float, tuple]]:
    """``moves`` from ``gchoice`` (best-predicted first) with the ones already judged and lost
    (``move_key``) moved behind the rest. After an accepted move most candidates are the same
    moves again, now on a policy that differs in two layers; a move that lost before mostly
    loses again (on MiniLM's 12-format menu, 14 of 17 accepted moves had never been judged, and
    over half of the judged candidates were moves judged before), so the unjudged ones go
    first: the next improvement comes after fewer candidates, and the lost ones still get their turn."""
    return sorted(moves, key=lambda m: move_key(gchoice, m[1]) in lost)  # stable: each tier keeps its order


def refine(problem: Problem, start: np.ndarray, judge: Judge, max_evals: int = 40,
           max_candidates: int = 400, progress: Callable[[int, int, float], None] | None = None,
           max_seconds: float | None = None, clock: Callable[[], float] = time.monotonic,
           patience: int | None = None) -> RefineResult:
    """Local search from layer choice ``start``; returns the best *measured* policy found.
    ``patience``: also stop once that many judged candidates in a row (since the start or the
    last accepted move) did not improve, or as many as it took to reach the last accepted move
    when that is more: the moves are tried best-predicted and unjudged first, so a long run of
    losers means the table's ordering has nothing better left to offer, and a search that still
    found improvements late has earned a longer wait than one that stopped finding them early
    (at most half of its judgements then go to the unrewarded tail)."""
    if max_evals < 1:
        raise ValueError(f"max_evals must be >= 1, got {max_evals}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
    if patience is not None and patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    t0 = clock()
    deadline = math.inf if max_seconds is None else t0 + max_seconds
    metric = next(iter(problem.budgets))
    reset_judge(judge)
    gcur = problem.collapse(start)
    cur_loss = judge(problem.expand(gcur))
    start_loss, evals, accepted, history = cur_loss, 1, 0, []
    tried: set[bytes] = {gcur.tobytes()}  # the start is measured: never spend an eval on it again
    lost: set[frozenset] = set()  # moves (move_key) judged worse than the policy they were tried on
    improved, out_of_time, since = True, False, 0  # since: judged candidates since the last improvement
    reached = 0  # the evaluation that found the last improvement

    def waited() -> bool:
        return patience is not None and since >= max(patience, reached)

    while improved and evals < max_evals and not out_of_time:
        improved = False
        for pred, changes in fresh_first(candidate_moves(problem, gcur, metric)[:max_candidates], lost, gcur):
            if clock() >= deadline:
                out_of_time = True
                break
            if waited():
                break
            g = gcur.copy()
            for grp, k in changes:
                g[grp] = k
            key = g.tobytes()
            if key in tried:
                continue
            tried.add(key)
            loss = judge(problem.expand(g))
            evals += 1
            # a racing judge answers inf for a candidate it stopped measuring once it fell behind
            history.append({"eval": evals, "predicted_delta": pred, "measured": loss if math.isfinite(loss) else None,
                            "accepted": loss < cur_loss})
            if progress:
                progress(evals, max_evals, min(cur_loss, loss))
            if loss < cur_loss:
                gcur, cur_loss, accepted, improved, since, reached = g, loss, accepted + 1, True, 0, evals
                break
            lost.add(move_key(gcur, changes))
            since += 1
            if evals >= max_evals:
                break
    stopped_by = ("time" if out_of_time else "evals" if evals >= max_evals
                  else "patience" if waited() else "converged")
    return RefineResult(problem.expand(gcur), start_loss, cur_loss, evals, accepted, history, stopped_by, clock() - t0)


def fitting_uniforms(problem: Problem) -> list[int]:
    """Format indices whose uniform policy keeps every budget, dearest first (on the first
    budget's metric; ties in menu order)."""
    n, metric = len(problem.costs.layers), next(iter(problem.budgets))
    cost = {k: problem.costs.cost(np.full(n, k)) for k in range(problem.n_formats)}
    return sorted((k for k in cost if within(cost[k], problem.budgets)), key=lambda k: -cost[k][metric])


def uniform_check(problem: Problem, judge: Judge, policy_loss: float, limit: int = 4) -> dict:
    """Never worse than uniform: the dearest uniform policies that keep every budget (at most
    ``limit``) are judged like refine's candidates, on the same held-apart samples; the best of
    them replaces the mixed policy when the judge finds it better (``chosen``, else None). A
    racing judge compares each with the refined policy, its best, and drops a loser early."""
    n, formats = len(problem.costs.layers), problem.costs.formats
    fits = fitting_uniforms(problem)[:limit]
    judged, best, best_loss = [], None, policy_loss
    for k in fits:
        loss = judge(np.full(n, k))
        judged.append({"format": formats[k].label, "judge_loss": loss if math.isfinite(loss) else None})
        if loss < best_loss:
            best, best_loss = formats[k].label, loss
    return {"policy_judge_loss": policy_loss, "judged": judged, "chosen": best}
