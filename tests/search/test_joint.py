"""Joint bit-width + pruning space (APQ): exact sparse costs, feasibility of everything the
search returns, bad parameters, and the search finding a known optimum with an exact predictor."""
from __future__ import annotations

import numpy as np
import pytest

from search.budgets import BudgetError, CostModel
from search.formats import make_formats
from search.joint import JointParams, JointSpace, check_ratios, evolve_joint, random_feasible
from search.layers import LayerInfo


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
    top = evolve_joint(s, budgets, noisy, JointParams(population=24, parents=6, generations=5, top_k=5))
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
    top = evolve_joint(s, budgets, truth, JointParams(population=64, parents=16, generations=20, top_k=1))
    assert truth(top[0])[0] == pytest.approx(truth(best)[0])


def test_structured_pruning_costs_kept_channels_dense():
    layers = [LayerInfo("l0", "Linear", (64, 128), 64 * 128, 128, 64 * 128)]
    s = JointSpace(CostModel(layers, make_formats([4], 64, False)), (0.0, 0.25, 0.5), structured=True)
    dense = s.total_bits[0, 0]
    assert s.total_bits[0, 1] == dense * 48 / 64 and s.total_bits[0, 2] == dense * 32 / 64  # no mask
    assert s.matrices["bops"][0, 2] == 0.5 * s.matrices["bops"][0, 0]
