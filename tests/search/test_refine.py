"""Refinement judged by a (synthetic) measured loss with an interaction the additive table misses."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from search.budgets import CostModel, within
from search.formats import make_formats
from search.layers import LayerInfo, TieGroups
from search.problem import Problem
from search.refine import candidate_moves, refine
from search.solvers.ilp import ILPSolver

# 4 equal layers (64x64, g64): per layer 2-bit = 4096*2 + 64*18 = 9344 bits,
# 4-bit = 4096*4 + 64*20 = 17664 bits, 8-bit = 4096*8 + 64*24 = 34304 bits.
# Budget = cost of (2, 2, 4, 4) bits = (2*9344 + 2*17664) / 16384 = 3.296875 avg bits.
# Table: layers 0, 1 tolerate 2 bits (loss 1.0), layers 2, 3 less so (loss 3.0):
#   ILP optimum (2,2,4,4): 1 + 1 + 1 + 1 = 4.0; (4,2,2,4): 0.1 + 1 + 3 + 1 = 5.1.
# Judge: the table's sum + 5.0 when layers 0 AND 1 are both at 2 bits (an interaction):
#   judged (2,2,4,4) = 9.0, judged (4,2,2,4) = 5.1 -> refine must leave the ILP's start.
LOSS = np.array([[1.0, 0.1, 0.0],
                 [1.0, 0.1, 0.0],
                 [3.0, 1.0, 0.05],
                 [3.0, 1.0, 0.05]])
PENALTY = 5.0


def make_problem(ties: TieGroups | None = None, budgets: dict | None = None) -> Problem:
    layers = [LayerInfo(f"block.{i}.fc", "linear", (64, 64), 4096, 64, 4096) for i in range(4)]
    costs = CostModel(layers, make_formats([2, 4, 8], 64, False))
    return Problem(LOSS, costs, budgets or {"avg_bits": 3.296875}, ties or TieGroups())


class CountingJudge:
    """The synthetic 'measurement': additive table + interaction; records every call."""

    def __init__(self, problem: Problem, penalty: float = PENALTY):
        self.problem = problem
        self.penalty = penalty
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, choice: np.ndarray) -> float:
        choice = np.asarray(choice)
        self.calls.append(tuple(int(k) for k in choice))
        # refine may only ever measure policies that meet every budget and tie
        assert within(self.problem.costs.cost(choice), self.problem.budgets)
        self.problem.collapse(choice)  # raises if a tie group is split
        loss = self.problem.objective(choice)
        if choice[0] == 0 and choice[1] == 0:
            loss += self.penalty
        return loss


def test_setup_ilp_start_is_hurt_by_the_interaction():
    problem = make_problem()
    sol = ILPSolver().solve(problem)
    assert sol.choice.tolist() == [0, 0, 1, 1]
    assert sol.objective == pytest.approx(4.0)
    assert CountingJudge(problem)(sol.choice) == pytest.approx(9.0)


def test_refine_beats_the_additive_optimum():
    problem = make_problem()
    start = ILPSolver().solve(problem).choice
    judge = CountingJudge(problem)
    res = refine(problem, start, judge, max_evals=40)
    assert res.start_loss == pytest.approx(9.0)
    assert res.final_loss < res.start_loss
    assert res.final_loss <= 5.1 + 1e-12
    assert res.accepted >= 1
    # the reported loss is the judge's value for the returned policy
    assert CountingJudge(problem)(res.choice) == pytest.approx(res.final_loss)
    assert not (res.choice[0] == 0 and res.choice[1] == 0)
    assert within(problem.costs.cost(res.choice), problem.budgets)
    assert res.evals == len(judge.calls) <= 40
    assert judge.calls[0] == tuple(start)
    assert len(res.history) == res.evals - 1
    assert sum(h["accepted"] for h in res.history) == res.accepted
    assert res.to_dict()["final_measured"] == res.final_loss


def test_refine_never_judges_a_policy_twice():
    problem = make_problem()
    judge = CountingJudge(problem)
    refine(problem, ILPSolver().solve(problem).choice, judge, max_evals=40)
    assert len(judge.calls) == len(set(judge.calls)), judge.calls


@pytest.mark.parametrize("max_evals", [1, 2, 3, 5, 8])
def test_refine_respects_max_evals(max_evals):
    problem = make_problem()
    judge = CountingJudge(problem)
    res = refine(problem, ILPSolver().solve(problem).choice, judge, max_evals=max_evals)
    assert len(judge.calls) <= max_evals
    assert res.evals == len(judge.calls)
    assert res.final_loss <= res.start_loss


def test_refine_one_eval_only_measures_the_start():
    problem = make_problem()
    start = ILPSolver().solve(problem).choice
    judge = CountingJudge(problem)
    res = refine(problem, start, judge, max_evals=1)
    assert judge.calls == [tuple(start)]
    assert res.choice.tolist() == start.tolist() and res.final_loss == res.start_loss == 9.0


@pytest.mark.parametrize("max_evals", [0, -1])
def test_refine_rejects_no_evaluations(max_evals):
    problem = make_problem()
    judge = CountingJudge(problem)
    with pytest.raises(ValueError, match="max_evals"):
        refine(problem, ILPSolver().solve(problem).choice, judge, max_evals=max_evals)
    assert judge.calls == []


class FakeClock:
    """Time that moves only when the judge measures: each judgement costs ``per_eval`` seconds."""

    def __init__(self, per_eval: float):
        self.now, self.per_eval = 1000.0, per_eval

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("seconds,expected_evals", [(2.5, 3), (4.0, 4), (0.5, 1)])
def test_refine_stops_on_its_wall_time_budget(seconds, expected_evals):
    """The time limit is checked between judgements: the start is always measured, and a
    judgement that began before the limit finishes (a policy is never half-judged)."""
    problem = make_problem()
    clock, judge = FakeClock(1.0), CountingJudge(problem, penalty=0.0)  # no interaction: few moves win

    def timed(choice):
        clock.now += clock.per_eval
        return judge(choice)

    res = refine(problem, ILPSolver().solve(problem).choice, timed, max_evals=40, max_seconds=seconds, clock=clock)
    assert res.evals == len(judge.calls) == expected_evals
    assert res.stopped_by == "time" and res.seconds == pytest.approx(expected_evals * 1.0)
    assert res.to_dict()["stopped_by"] == "time"
    assert within(problem.costs.cost(res.choice), problem.budgets)


def test_refine_says_why_it_stopped():
    problem = make_problem()
    start = ILPSolver().solve(problem).choice
    assert refine(problem, start, CountingJudge(problem), max_evals=2).stopped_by == "evals"
    free = refine(problem, start, CountingJudge(problem), max_evals=10_000, max_seconds=3600)
    assert free.stopped_by == "converged" and free.evals < 10_000


@pytest.mark.parametrize("seconds", [0, -1.0])
def test_refine_rejects_a_time_budget_that_is_not_positive(seconds):
    problem = make_problem()
    judge = CountingJudge(problem)
    with pytest.raises(ValueError, match="max_seconds"):
        refine(problem, ILPSolver().solve(problem).choice, judge, max_seconds=seconds)
    assert judge.calls == []


def test_refine_progress_callback():
    problem = make_problem()
    seen = []
    refine(problem, ILPSolver().solve(problem).choice, CountingJudge(problem), max_evals=6,
           progress=lambda done, total, best: seen.append((done, total, best)))
    assert seen and all(total == 6 for _, total, _ in seen)
    assert [d for d, _, _ in seen] == sorted(d for d, _, _ in seen)
    assert all(b2 <= b1 for (_, _, b1), (_, _, b2) in zip(seen, seen[1:]))


def test_refine_without_interaction_keeps_the_exact_optimum():
    problem = make_problem()
    start = ILPSolver().solve(problem).choice
    res = refine(problem, start, CountingJudge(problem, penalty=0.0), max_evals=40)
    assert res.accepted == 0
    assert res.choice.tolist() == start.tolist()
    assert res.final_loss == res.start_loss == pytest.approx(4.0)


def test_refine_keeps_ties_and_secondary_budgets():
    # layers 2 and 3 tied; a second budget (size) equal to the first one's bytes
    problem = make_problem(TieGroups([[2, 3]]), {"avg_bits": 3.296875, "size_bytes": 3.296875 * 16384 / 8})
    start = ILPSolver().solve(problem).choice
    judge = CountingJudge(problem)  # asserts budgets + ties on every call
    res = refine(problem, start, judge, max_evals=30)
    assert res.choice[2] == res.choice[3]
    assert within(problem.costs.cost(res.choice), problem.budgets)
    assert res.final_loss <= res.start_loss


def test_candidate_moves_keep_every_budget():
    problem = make_problem()
    g = problem.collapse(np.array([0, 0, 1, 1]))
    moves = candidate_moves(problem, g, "avg_bits")
    assert moves
    preds = [m[0] for m in moves]
    assert preds == sorted(preds)
    for pred, changes in moves:
        h = g.copy()
        for grp, k in changes:
            h[grp] = k
        choice = problem.expand(h)
        assert problem.feasible(choice)
        assert pred == pytest.approx(problem.objective(choice) - problem.objective(problem.expand(g)))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), max_evals=st.integers(1, 25), n=st.integers(3, 6))
def test_refine_random_judges(seed, max_evals, n):
    """Random tables and random non-additive judges: never over budget, never over max_evals,
    never worse than the start."""
    rng = np.random.default_rng(seed)
    layers = [LayerInfo(f"l{i}", "linear", (int(rng.integers(1, 8)), 64), 0, 64, 0) for i in range(n)]
    layers = [LayerInfo(l.name, l.kind, l.shape, l.shape[0] * 64, 64, l.shape[0] * 64) for l in layers]
    formats = make_formats([2, 3, 4, 8])
    costs = CostModel(layers, formats)
    loss = np.sort(rng.uniform(0, 1, size=(n, 4)), axis=1)[:, ::-1]
    ref = rng.integers(0, 4, size=n)
    problem = Problem(loss, costs, {"avg_bits": costs.cost(ref)["avg_bits"]})
    W = rng.normal(0, 0.2, size=(n, n))

    calls = []

    def judge(choice):
        calls.append(tuple(int(k) for k in choice))
        assert problem.feasible(choice)
        low = (np.asarray(choice) == 0).astype(float)
        return problem.objective(choice) + float(low @ W @ low)

    start = ILPSolver().solve(problem).choice
    res = refine(problem, start, judge, max_evals=max_evals)
    assert len(calls) == res.evals <= max_evals
    assert problem.feasible(res.choice)
    assert res.final_loss <= res.start_loss
    assert judge(res.choice) == pytest.approx(res.final_loss)


class RacingStub(CountingJudge):
    """Answers inf (gave up early) for any candidate worse than the best it has seen whole;
    ``reset`` must be called before every search, as the real racing judge needs."""

    def __init__(self, problem: Problem):
        super().__init__(problem)
        self.best: float | None = None
        self.resets = 0

    def reset(self) -> None:
        self.best, self.resets = None, self.resets + 1

    def __call__(self, choice: np.ndarray) -> float:
        loss = super().__call__(choice)
        if self.best is not None and loss >= self.best:
            return float("inf")
        self.best = loss
        return loss


def test_a_racing_judge_is_reset_per_search_and_its_give_ups_are_recorded():
    problem = make_problem()
    start = ILPSolver().solve(problem).choice
    judge = RacingStub(problem)
    first = refine(problem, start, judge, max_evals=40)
    again = refine(problem, start, judge, max_evals=40)
    assert judge.resets == 2  # without the reset the second search's start would race the first's best
    for res in (first, again):
        assert res.start_loss == pytest.approx(9.0) and res.final_loss == pytest.approx(5.1)
        gave_up = [h for h in res.history if h["measured"] is None]
        assert gave_up and not any(h["accepted"] for h in gave_up)


def test_uniform_check_returns_a_uniform_policy_only_when_the_judge_prefers_it():
    """Never worse than uniform: every uniform policy that fits is judged (dearest first); one is
    chosen only when it beats the mixed policy's judge loss."""
    from search.refine import uniform_check
    problem = make_problem()  # budget 3.296875 avg bits: uniform 2-bit fits, uniform 4- and 8-bit do not
    judge = CountingJudge(problem)
    out = uniform_check(problem, judge, policy_loss=5.1)
    assert [j["format"] for j in out["judged"]] == [problem.costs.formats[0].label]
    assert judge.calls == [(0, 0, 0, 0)]
    assert out["chosen"] is None and out["judged"][0]["judge_loss"] == pytest.approx(1 + 1 + 3 + 3 + PENALTY)
    assert uniform_check(problem, CountingJudge(problem), policy_loss=50.0)["chosen"] == problem.costs.formats[0].label
    roomy = make_problem(budgets={"avg_bits": 8.5})
    judged = uniform_check(roomy, CountingJudge(roomy), policy_loss=1.0)["judged"]
    assert [j["format"] for j in judged] == [f.label for f in reversed(roomy.costs.formats)]


def test_patience_stops_after_that_many_losers_in_a_row():
    """A judge that never improves on the start: with patience 2, refine judges the start and
    two candidates and says it stopped on patience; a patience no run reaches changes nothing."""
    problem = make_problem()
    start = np.array([0, 0, 1, 1])
    flat = lambda c: 1.0  # noqa: E731  (nothing ever improves)
    res = refine(problem, start, flat, max_evals=50, patience=2)
    assert res.evals == 3 and res.stopped_by == "patience" and res.accepted == 0
    free = refine(problem, start, flat, max_evals=50)
    assert free.stopped_by == "converged" and free.evals > 3
    judge_a, judge_b = CountingJudge(problem), CountingJudge(problem)
    a = refine(problem, start, judge_a, max_evals=50)
    b = refine(problem, start, judge_b, max_evals=50, patience=1000)
    assert a.choice.tolist() == b.choice.tolist() and judge_a.calls == judge_b.calls


def test_patience_counts_from_the_last_accepted_move():
    """An improvement resets the count: refine still reaches the interaction-free policy that
    the unlimited search finds, as long as the improvements come within the patience."""
    problem = make_problem()
    start = ILPSolver().solve(problem).choice
    full = refine(problem, start, CountingJudge(problem), max_evals=100)
    assert full.accepted >= 1
    gaps = np.diff([0] + [h["eval"] for h in full.history if h["accepted"]])
    res = refine(problem, start, CountingJudge(problem), max_evals=100, patience=int(gaps.max()))
    assert res.choice.tolist() == full.choice.tolist() and res.final_loss == full.final_loss
    with pytest.raises(ValueError, match="patience"):
        refine(problem, start, CountingJudge(problem), patience=0)


def test_fresh_first_moves_lost_changes_behind_the_rest_in_predicted_order():
    from search.refine import fresh_first, move_key
    g = np.array([0, 1, 1, 0])
    moves = [(-0.3, ((0, 1),)), (-0.2, ((1, 2), (2, 0))), (0.1, ((3, 1),)), (0.4, ((1, 2),))]
    assert fresh_first(moves, set(), g) == moves
    lost = {move_key(g, moves[1][1]), move_key(g, moves[0][1])}
    assert lost == {frozenset({(1, 1, 2), (2, 1, 0)}), frozenset({(0, 0, 1)})}
    assert fresh_first(moves, lost, g) == [moves[2], moves[3], moves[0], moves[1]]
    # the same target formats reached from other formats is another move
    assert fresh_first(moves, lost, np.array([2, 0, 1, 0]))[:2] == moves[:2]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(4, 7))
def test_after_an_accepted_move_unjudged_changes_come_before_lost_ones(seed, n):
    """Within every round (between accepted moves), no change that lost in an earlier round is
    judged while a change never judged is still waiting, and refine still ends no worse."""
    rng = np.random.default_rng(seed)
    layers = [LayerInfo(f"l{i}", "linear", (64, 64), 4096, 64, 4096) for i in range(n)]
    costs = CostModel(layers, make_formats([2, 3, 4, 8], 64, False))
    loss = np.sort(rng.uniform(0, 1, size=(n, 4)), axis=1)[:, ::-1]
    problem = Problem(loss, costs, {"avg_bits": costs.cost(np.full(n, 1))["avg_bits"]})
    W = rng.normal(0, 0.3, size=(n, n))
    calls: list[np.ndarray] = []

    def judge(choice):
        calls.append(np.asarray(choice).copy())
        low = (np.asarray(choice) <= 1).astype(float)
        return problem.objective(choice) + float(low @ W @ low)

    start = ILPSolver().solve(problem).choice
    res = refine(problem, start, judge, max_evals=60)
    assert res.final_loss <= res.start_loss
    accepted = {h["eval"] for h in res.history if h["accepted"]}
    base, lost, this_round = calls[0], set(), []
    for e, c in enumerate(calls[1:], start=2):
        change = frozenset((int(i), int(base[i]), int(c[i])) for i in np.flatnonzero(c != base))
        if change in lost:  # a lost change: every unjudged one of this round is judged by now
            this_round.append("lost")
        else:
            assert "lost" not in this_round, "an unjudged change came after a lost one"
            this_round.append("new")
        if e in accepted:
            base, this_round = c, []
        else:
            lost.add(change)


def test_patience_grows_to_the_evaluations_that_found_the_last_improvement():
    """A search that found its last improvement at evaluation e waits max(patience, e) losers."""
    rng = np.random.default_rng(3)
    n = 8
    layers = [LayerInfo(f"l{i}", "linear", (64, 64), 4096, 64, 4096) for i in range(n)]
    costs = CostModel(layers, make_formats([2, 3, 4, 8], 64, False))
    problem = Problem(np.sort(rng.uniform(0, 1, size=(n, 4)), axis=1)[:, ::-1], costs,
                      {"avg_bits": costs.cost(np.full(n, 1))["avg_bits"]})
    start = ILPSolver().solve(problem).choice
    late = {"n": 0}

    def judge(choice):  # the start, then losers, then one improvement on the 12th evaluation, then losers
        late["n"] += 1
        return 1.0 if late["n"] == 1 else 0.5 if late["n"] == 12 else 2.0

    res = refine(problem, start, judge, max_evals=200, patience=11)
    assert [h["eval"] for h in res.history if h["accepted"]] == [12]
    assert res.stopped_by == "patience" and res.evals == 12 + 12  # waited 12 (> 11) after it
