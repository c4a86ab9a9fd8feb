"""Joint bit-width + pruning space (APQ): exact sparse costs, feasibility of everything the
search returns, bad parameters, the search finding a known optimum with an exact predictor, and
the joint search as the registered solver "joint" that validation handles like any other."""
from __future__ import annotations

import numpy as np
import pytest

from search.budgets import BudgetError, CostModel
from search.formats import make_formats
from search.joint import JointParams, JointSpace, check_ratios, predictor_guided_search, random_feasible
from search.layers import LayerInfo
from search.solvers import SOLVERS, Solver, get_solver
from search.solvers.joint import JointSolver
from search.spec import SearchSpec
from search.validate import check_spec_budgets, static_check


def space(n=6, ratios=(0.0, 0.25, 0.5)) -> JointSpace:
    layers = [LayerInfo(f"l{i}", "Linear", (64, 128), 64 * 128, 128, 64 * 128) for i in range(n)]
    return JointSpace(CostModel(layers, make_formats([2, 4, 8], 64, False)), ratios)


def test_sparse_storage_is_exact():
    s = space(1)
    numel = 64 * 128
    groups = numel // 64
    # w4g64a dense: numel*4 + groups*(16+4); pruned at 0.5: mask + kept*4 + same scales
    dense = s.total_bits[0, s.option(1, 0)]
    half = s.total_bits[0, s.option(1, 2)]
    assert dense == numel * 4 + groups * 20
    assert half == numel + (numel // 2) * 4 + groups * 20
    assert s.matrices["bops"][0, s.option(1, 2)] == pytest.approx(0.5 * s.matrices["bops"][0, s.option(1, 0)])
    assert s.format_of(s.option(2, 1)).bits == 8 and s.ratio_of(s.option(2, 1)) == 0.25


def test_bad_ratios_and_params():
    with pytest.raises(ValueError, match="must be in"):
        check_ratios([0, 1.0])
    with pytest.raises(ValueError):
        check_ratios([])
    for bad in (dict(population=0), dict(parents=1), dict(generations=0), dict(mutation=0), dict(top_k=0)):
        with pytest.raises(ValueError):
            JointParams(**bad).check()
    with pytest.raises(BudgetError, match="below the cheapest joint policy"):
        space().check_budgets({"avg_bits": 0.5})


def test_every_returned_policy_meets_every_budget():
    s = space(8)
    budgets = {"avg_bits": 3.2, "bops": 0.4 * s.matrices["bops"].max(axis=1).sum()}
    rng = np.random.default_rng(0)
    assert s.feasible(random_feasible(s, budgets, 30, rng), budgets).all()
    noisy = lambda c: rng.normal(size=len(c))
    top = predictor_guided_search(s, budgets, noisy, JointParams(population=24, parents=6, generations=5, top_k=5))
    assert len(top) == 5 and s.feasible(top, budgets).all()
    assert len({tuple(t) for t in top}) == 5


def test_search_finds_the_known_optimum_with_an_exact_predictor():
    """Loss = Σ_l w_l·err(option): with the true loss as predictor the search must reach the
    exact optimum (brute force over 3 layers × 9 options)."""
    s = space(3)
    rng = np.random.default_rng(1)
    err = rng.random((3, s.n_options)) * np.linspace(3, 0.1, s.n_options)[None, :]
    truth = lambda c: err[np.arange(3)[None, :], np.atleast_2d(c)].sum(axis=1)
    budgets = {"avg_bits": 4.0}
    grid = np.array(np.meshgrid(*[np.arange(s.n_options)] * 3)).reshape(3, -1).T
    best = grid[s.feasible(grid, budgets)][np.argmin(truth(grid[s.feasible(grid, budgets)]))]
    top = predictor_guided_search(s, budgets, truth, JointParams(population=64, parents=16, generations=20, top_k=1))
    assert truth(top[0])[0] == pytest.approx(truth(best)[0])


def test_structured_pruning_costs_kept_channels_dense():
    layers = [LayerInfo("l0", "Linear", (64, 128), 64 * 128, 128, 64 * 128)]
    s = JointSpace(CostModel(layers, make_formats([4], 64, False)), (0.0, 0.25, 0.5), structured=True)
    dense = s.total_bits[0, 0]
    assert s.total_bits[0, 1] == dense * 48 / 64 and s.total_bits[0, 2] == dense * 32 / 64  # no mask
    assert s.matrices["bops"][0, 2] == 0.5 * s.matrices["bops"][0, 0]


def _spec(**kw) -> SearchSpec:
    return SearchSpec(**{"model": "builtin:digits-cnn", "budgets": {"avg_bits": 2.5}, "bits": [2, 4, 8],
                         "group_size": 64, **kw})


def test_joint_is_a_registered_solver_that_measures_policies():
    assert SOLVERS["joint"] is JointSolver
    assert [n for n, c in SOLVERS.items() if not c.needs_table] == ["joint"]
    assert [n for n, c in SOLVERS.items() if c.takes_params] == ["joint"]
    s = get_solver("joint")
    assert s.name == "joint" and s.ratios == (0.0, 0.25, 0.5) and not s.structured
    with pytest.raises(ValueError, match="does not solve a sensitivity table"):
        s.solve(None)


def test_validation_builds_the_joint_solver_through_the_registry():
    spec = _spec(solver="joint", seed=3, solver_params={"ratios": [0.5, 0], "structured": True, "population": 8,
                                                        "parents": 4, "prior": None})
    solver = static_check(spec).solver
    assert isinstance(solver, JointSolver)
    assert solver.ratios == (0.0, 0.5) and solver.structured and solver.params.population == 8
    assert solver.params.seed == 3 and solver.predictor.prior is None
    # budgets are checked against the solver's own space: 2 bits is below every dense policy
    # (w2g64a costs 2 + 18/64 bits a weight) but not below pruning 75 % (1 + 0.5 + 18/64)
    costs = CostModel(space(4).costs.layers, make_formats([2, 4, 8], 64, False))
    tight = _spec(solver="joint", budgets={"avg_bits": 2.0}, solver_params={"ratios": [0, 0.75]})
    joint_space = check_spec_budgets(tight, costs, None, static_check(tight).solver)
    assert isinstance(joint_space, JointSpace) and joint_space.ratios == (0.0, 0.75)
    assert joint_space.costs is costs
    dense = _spec(solver="ilp", budgets={"avg_bits": 2.0})
    with pytest.raises(BudgetError, match="below the cheapest policy"):
        check_spec_budgets(dense, costs, None, static_check(dense).solver)
    assert check_spec_budgets(_spec(solver="ilp"), costs, None, static_check(_spec(solver="ilp")).solver) is None


def test_validation_errors_come_from_the_registry():
    with pytest.raises(ValueError, match=r"solver 'ilp' takes no solver_params \(only 'joint' does\)"):
        static_check(_spec(solver="ilp", solver_params={"population": 4}))
    with pytest.raises(ValueError, match="GPTQ after pruning is not supported"):
        static_check(_spec(solver="joint", quantizer="gptq"))
    with pytest.raises(ValueError, match=r"unknown solver 'magic': choose from convex, ilp, lp, pareto "
                                         r"\(or 'refine' after one of them\), joint"):
        static_check(_spec(solver="magic"))
    with pytest.raises(ValueError, match="tie groups are not supported by the joint search"):
        static_check(_spec(solver="joint", ties=["q|k|v"]))


def test_a_newly_registered_solver_is_validated_without_naming_it(monkeypatch):
    """Nothing in validation names a solver: a registered one that takes parameters and measures
    policies itself is parsed, checked and asked for its space by the same code as joint."""
    class Probe(Solver):
        name, takes_params, needs_table = "probe", True, False

        def __init__(self, level: int = 0):
            self.level = level

        @classmethod
        def from_params(cls, params, seed, ties):
            return cls(int(params.get("level", 0)))

        def check_budgets(self, costs, budgets, ties=None):
            return ("probe-space", self.level)

        def _solve(self, problem):
            raise AssertionError("never called")

    monkeypatch.setitem(SOLVERS, "probe", Probe)
    spec = _spec(solver="probe", solver_params={"level": 7})
    solver = static_check(spec).solver
    assert isinstance(solver, Probe) and solver.level == 7
    assert check_spec_budgets(spec, space(2).costs, None, solver) == ("probe-space", 7)
    with pytest.raises(ValueError, match=r"only 'joint' or 'probe' do"):
        static_check(_spec(solver="ilp", solver_params={"level": 1}))
