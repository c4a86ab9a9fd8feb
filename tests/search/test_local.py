"""The operating-point loop on a synthetic model whose true loss is not the proxy's: pure logic,
with an exact 'measurement' and 'judge' from a known loss function."""
from __future__ import annotations

import numpy as np
import pytest

from search.budgets import CostModel
from search.formats import make_formats
from search.layers import LayerInfo
from search.local import neighbours, margin_sides, operating_point, operating_point_loop, proxy_scale
from search.problem import Problem
from search.solvers.ilp import ILPSolver

FORMATS = make_formats([2, 3, 4, 8], 64, False)  # w2 w3 w4 w8, g64
N = 12


def costs(n: int = N) -> CostModel:
    return CostModel([LayerInfo(f"b.{i}.fc", "linear", (64, 64), 4096, 64, 4096) for i in range(n)], FORMATS)


def uniform_bits(k: int, n: int = N) -> float:
    return costs(n).cost(np.full(n, k))["avg_bits"]


class TrueLoss:
    """Per-layer loss per format times a context factor: quantization noise elsewhere makes
    every layer's own noise count more (the interaction an additive float table misses)."""

    def __init__(self, seed: int = 0, n: int = N, coupling: float = 0.05):
        rng = np.random.default_rng(seed)
        sens = rng.lognormal(0, 1.0, n)
        self.err = sens[:, None] * np.array([16.0, 4.0, 1.0, 0.004])[None, :]  # ~4x per bit
        self.coupling, self.n = coupling, n
        self.calls = 0

    def __call__(self, choice: np.ndarray) -> float:
        self.calls += 1
        e = self.err[np.arange(self.n), choice]
        return float(e.sum() * (1 + self.coupling * e.sum()))

    def measure(self, base: np.ndarray, cells: dict[int, list[int]]):
        out = np.full((self.n, len(FORMATS)), np.nan)
        b = self(base)
        for i, ks in cells.items():
            for k in ks:
                c = base.copy()
                c[i] = k
                out[i, k] = self(c) - b
        return out, None


def ilp(problem: Problem) -> np.ndarray:
    return ILPSolver().solve(problem).choice


def test_operating_point_is_the_dearest_uniform_that_fits():
    p = Problem(np.zeros((N, 4)), costs(), {"avg_bits": uniform_bits(1) + 0.01})
    assert operating_point(p) == 1
    p = Problem(np.zeros((N, 4)), costs(), {"avg_bits": uniform_bits(2)})
    assert operating_point(p) == 2
    assert operating_point(Problem(np.zeros((N, 4)), costs(), {"avg_bits": 1.0})) is None


def test_neighbours_are_one_level_down_and_up_and_the_next_group_sizes():
    fm = make_formats([2, 3, 4, 8], [32, 64, 128], False)
    layer = LayerInfo("fc", "linear", (256, 256), 65536, 256, 65536)
    row = CostModel([layer], fm).matrix("avg_bits")[0]
    labels = [f.label for f in fm]
    got = lambda lab: sorted(fm[i].label for i in neighbours(fm, row, labels.index(lab)))  # noqa: E731
    assert got("w3g64a") == ["w2g32a", "w3g128a", "w3g32a", "w4g128a"]
    assert got("w8g128a") == ["w4g32a", "w8g64a"]
    assert got("w2g128a") == ["w2g64a", "w3g128a"]
    one = FORMATS
    assert sorted(one[i].label for i in neighbours(one, costs(1).matrix("avg_bits")[0], 1)) == ["w2g64a", "w4g64a"]


def test_margin_rows_are_the_best_upgrades_and_cheapest_downgrades():
    est = np.array([[5.0, 0, -1.0, -1.1], [1.0, 0, -4.0, -4.1], [9.0, 0, -0.1, -0.1], [0.2, 0, -0.5, -0.5]])
    cost = np.tile(np.array([2.0, 3.0, 4.0, 8.0]), (4, 1))
    base = np.full(4, 1)
    assert margin_sides(est, cost, base, 1) == ([1], [3])  # row 1 upgrades best, row 3 downgrades cheapest
    assert sorted(set().union(*margin_sides(est, cost, base, 1, exclude={1, 3}))) == [0]


def test_proxy_scale_fits_through_the_origin():
    assert proxy_scale([(1.0, 2.0), (2.0, 4.0)]) == pytest.approx(2.0)
    assert proxy_scale([]) == 1.0
    assert proxy_scale([(1.0, -1.0)]) == 1.0  # a nonsensical fit keeps the proxy's unit


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loop_beats_uniform_and_the_misled_proxy_by_the_true_loss(seed):
    truth = TrueLoss(seed)
    budget = {"avg_bits": uniform_bits(1)}  # exactly uniform 3-bit's cost: every upgrade needs a downgrade
    # the proxy underrates 2-bit badly (as an additive float table does under interaction) and is off in scale
    proxy = truth.err * np.array([0.05, 1.0, 1.0, 1.0])[None, :] * 0.01
    proxy = proxy - proxy[:, [3]]
    problem = Problem(proxy, costs(), budget)
    misled = ilp(problem)
    res = operating_point_loop(problem, FORMATS, truth.measure, truth, ilp)
    uniform = truth(np.full(N, 1))
    assert res.start == "w3g64a" and res.start_loss == pytest.approx(uniform)
    assert res.final_loss == pytest.approx(truth(res.choice))
    assert problem.feasible(res.choice)
    assert res.final_loss < uniform  # mixing pays on this model
    assert res.final_loss < truth(misled)
    assert res.stopped_by in {"judge", "converged", "rounds"}
    assert res.measured_cells > 0 and res.rounds[0]["measured_rows"] > 0
    assert res.scale > 0


def test_loop_never_returns_worse_than_the_operating_point():
    truth = TrueLoss(3, coupling=5.0)  # interactions dominate: every mix looks better than it is

    def judge(choice):
        return truth(choice) + (0.0 if np.all(choice == 1) else 1e6)  # only uniform is good

    problem = Problem(truth.err - truth.err[:, [1]], costs(), {"avg_bits": uniform_bits(1)})
    res = operating_point_loop(problem, FORMATS, truth.measure, judge, ilp)
    np.testing.assert_array_equal(res.choice, np.full(N, 1))
    assert res.final_loss == res.start_loss
    assert res.rounds and res.rounds[-1]["accepted"] is False


def test_loop_stops_on_time_and_refuses_a_budget_no_uniform_meets():
    truth = TrueLoss(0)
    problem = Problem(truth.err, costs(), {"avg_bits": uniform_bits(1)})
    ticks = iter(range(1000))
    res = operating_point_loop(problem, FORMATS, truth.measure, truth, ilp, max_seconds=0.5, clock=lambda: next(ticks))
    assert res.stopped_by == "time" and not res.rounds
    with pytest.raises(ValueError, match="no uniform format"):
        operating_point_loop(problem.with_budgets({"avg_bits": 1.5}), FORMATS, truth.measure, truth, ilp)


def test_judged_candidates_move_only_rows_measured_before():
    truth = TrueLoss(4)
    seen: set[int] = set()
    moved_unmeasured = []

    def measure(base, cells):
        seen.update(cells)
        return truth.measure(base, cells)

    def judge(choice):
        moved = set(int(i) for i in np.flatnonzero(choice != 1))
        if not np.all(choice == 1) and not moved <= seen:
            moved_unmeasured.append(moved - seen)
        return truth(choice)

    problem = Problem(truth.err * 0.01, costs(), {"avg_bits": uniform_bits(1)})
    res = operating_point_loop(problem, FORMATS, measure, judge, ilp, max_rows=3, margin=1)
    assert not moved_unmeasured
    assert all(e["measured_rows"] <= 3 for e in res.rounds)


def test_loop_begins_at_the_solvers_policy_when_the_judge_prefers_it():
    truth = TrueLoss(5)
    problem = Problem(truth.err, costs(), {"avg_bits": uniform_bits(1)})
    best = ilp(problem.with_loss(truth.err))  # the exact optimum of the additive part: far better than uniform
    assert truth(best) < truth(np.full(N, 1))
    res = operating_point_loop(problem, FORMATS, truth.measure, truth, ilp, start=best)
    assert res.began == "solver" and res.start == "w3g64a"
    assert res.start_loss == pytest.approx(truth(np.full(N, 1)))  # still what it must beat
    assert res.final_loss <= truth(best)
    worse = operating_point_loop(problem, FORMATS, truth.measure, truth, ilp, start=np.full(N, 0))  # uniform 2-bit: judged worse
    assert worse.began == "uniform"


def test_neighbours_on_one_side_and_margin_sides_in_order():
    fm = make_formats([2, 3, 4], [32, 64, 128], False)
    row = CostModel([LayerInfo("fc", "linear", (256, 256), 65536, 256, 65536)], fm).matrix("avg_bits")[0]
    k = [f.label for f in fm].index("w3g64a")
    up = sorted(fm[i].label for i in neighbours(fm, row, k, +1))
    down = sorted(fm[i].label for i in neighbours(fm, row, k, -1))
    assert up == ["w3g32a", "w4g128a"] and down == ["w2g32a", "w3g128a"]
    assert sorted(neighbours(fm, row, k)) == sorted(neighbours(fm, row, k, +1) + neighbours(fm, row, k, -1))
    est = np.array([[0.5, 0.0, -1.0], [0.1, 0.0, -0.1], [0.01, 0.0, -2.0], [2.0, 0.0, -0.2]])
    cost = np.tile([1.0, 2.0, 3.0], (4, 1))
    ups, downs = margin_sides(est, cost, np.full(4, 1), 2)
    assert ups == [2, 0] and downs == [2, 1]  # best gain per bit first; cheapest loss per bit first


def test_a_rejected_long_step_is_shortened_until_the_judge_agrees():
    truth = TrueLoss(6)
    ups_in_judged = []

    def judge(choice):  # a model whose layers interact so much that only short steps pay
        ups = int((choice > 1).sum())
        ups_in_judged.append(ups)
        return truth(choice) + (1e6 if ups > 2 else 0.0)

    problem = Problem(truth.err - truth.err[:, [1]], costs(), {"avg_bits": uniform_bits(1)})
    res = operating_point_loop(problem, FORMATS, truth.measure, judge, ilp)
    shorter = [e for e in res.rounds if e.get("step") == "shorter"]
    assert shorter and any(e["accepted"] for e in shorter)
    assert max(ups_in_judged) > 2  # the solver's first step was long, and was judged
    assert res.final_loss < truth(np.full(N, 1)) and (res.choice > 1).sum() <= 2
    assert res.to_dict()["n_rounds"] == max(e["round"] for e in res.rounds)


def test_a_loop_with_nothing_left_to_measure_converges_rather_than_running_out_of_time():
    truth = TrueLoss(7, n=3)
    c = CostModel([LayerInfo(f"b.{i}.fc", "linear", (64, 64), 4096, 64, 4096) for i in range(3)], FORMATS)
    problem = Problem(truth.err - truth.err[:, [1]], c, {"avg_bits": c.cost(np.full(3, 1))["avg_bits"]})
    res = operating_point_loop(problem, FORMATS, truth.measure, truth, ilp, max_seconds=1e9)
    assert res.stopped_by in {"converged", "judge"}


def test_a_round_is_measured_in_chunks_and_stops_near_the_time_limit():
    truth = TrueLoss(8, n=40)
    c = CostModel([LayerInfo(f"b.{i}.fc", "linear", (64, 64), 4096, 64, 4096) for i in range(40)], FORMATS)
    now = [0.0]

    def measure(base, cells):  # one second per cell
        now[0] += sum(len(ks) for ks in cells.values())
        return truth.measure(base, cells)

    def judge(choice):  # a judgement costs four cells
        now[0] += 4.0
        return truth(choice)

    problem = Problem(truth.err - truth.err[:, [1]], c, {"avg_bits": c.cost(np.full(40, 1))["avg_bits"]})
    res = operating_point_loop(problem, FORMATS, measure, judge, ilp, max_rows=24, max_seconds=20.0,
                               clock=lambda: now[0])
    first = res.rounds[0]
    assert res.measured_cells >= 1 and first["measured_rows"] < 24  # the round's rows were cut to the time left
    assert res.seconds <= 20.0 + 4 * 3 + 2 * 4.0  # past the limit by at most the first chunk and two judgements
