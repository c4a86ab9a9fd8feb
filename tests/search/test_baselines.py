"""The baselines users compare with: llama.cpp's _M rule at a budget, and greedy upgrades."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from search.baselines import greedy_upgrades, llamacpp_mix, promoted_layers, use_more_bits
from search.budgets import CostModel, within
from search.formats import make_formats
from search.layers import LayerInfo
from search.problem import InfeasibleError, Problem
from search.solvers.ilp import ILPSolver

KINDS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _llama(n_blocks=8, d=64):
    return [LayerInfo(f"model.layers.{i}.{'self_attn' if k.endswith(('q_proj', 'k_proj', 'v_proj', 'o_proj')) else 'mlp'}.{k}",
                      "linear", (d, d), d * d, d, d * d) for i in range(n_blocks) for k in KINDS]


def test_use_more_bits_is_llama_cpps_block_set():
    assert [i for i in range(30) if use_more_bits(i, 30)] == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
    assert [i for i in range(8) if use_more_bits(i, 8)] == [0, 3, 6, 7]


def test_promoted_layers_are_value_and_down_projections_of_those_blocks():
    layers = _llama()
    got = {l.name for l, p in zip(layers, promoted_layers(layers)) if p}
    want = {f"model.layers.{i}.{m}" for i in (0, 3, 6, 7) for m in ("self_attn.v_proj", "mlp.down_proj")}
    assert got == want
    bert = [LayerInfo(n, "linear", (4, 4), 16, 4, 16) for n in
            ("encoder.layer.0.attention.self.value", "encoder.layer.0.attention.output.dense", "encoder.layer.0.output.dense")]
    assert promoted_layers(bert) == [True, False, True]


@pytest.mark.parametrize("budget", [3.3, 3.8, 4.3125, 5.0])
def test_llamacpp_mix_is_the_dearest_two_format_rule_that_fits(budget):
    layers = _llama()
    formats = make_formats([2, 3, 4, 8], 64, False)
    costs = CostModel(layers, formats)
    choice = llamacpp_mix(layers, formats, costs, {"avg_bits": budget})
    promoted = np.array(promoted_layers(layers))
    assert within(costs.cost(choice), {"avg_bits": budget})
    assert len(set(choice[promoted])) == 1 and len(set(choice[~promoted])) == 1
    assert formats[choice[promoted][0]].bits > formats[choice[~promoted][0]].bits  # a real mix fits at these budgets
    best = max(costs.cost(np.where(promoted, p, o))["avg_bits"] for o, p in itertools.product(range(4), repeat=2)
               if formats[p].bits > formats[o].bits and costs.cost(np.where(promoted, p, o))["avg_bits"] <= budget + 1e-9)
    assert costs.cost(choice)["avg_bits"] == pytest.approx(best)
    with pytest.raises(InfeasibleError):
        llamacpp_mix(layers, formats, costs, {"avg_bits": 1.0})


def test_llamacpp_mix_falls_back_to_uniform_when_no_mix_fits():
    layers = _llama()
    formats = make_formats([2, 3, 4, 8], 64, False)
    costs = CostModel(layers, formats)
    cheapest = costs.cost(np.zeros(len(layers), dtype=int))["avg_bits"]
    choice = llamacpp_mix(layers, formats, costs, {"avg_bits": cheapest + 1e-6})
    assert set(choice) == {0}


def test_greedy_fits_and_never_beats_the_exact_ilp():
    rng = np.random.default_rng(0)
    layers = _llama(4)
    formats = make_formats([2, 3, 4, 8], [32, 64, 128], False)
    costs = CostModel(layers, formats)
    bits = np.array([f.bits for f in formats], float)
    loss = rng.gamma(2.0, 1.0, (len(layers), 1)) * np.exp(-0.7 * bits)[None, :] * rng.uniform(0.8, 1.2, (len(layers), len(formats)))
    for budget in (2.8, 3.3, 4.3125):
        problem = Problem(loss, costs, {"avg_bits": budget})
        g = greedy_upgrades(problem)
        assert within(costs.cost(g), {"avg_bits": budget})
        assert problem.objective(g) >= ILPSolver().solve(problem).objective - 1e-9
        # greedy stops only when no single upgrade that lowers the loss still fits
        assert problem.objective(g) < problem.objective(np.argmin(costs.matrix("avg_bits"), axis=1))


def test_greedy_refuses_a_budget_below_the_cheapest_formats():
    layers = _llama(1)
    costs = CostModel(layers, make_formats([2, 4], 64, False))
    with pytest.raises(InfeasibleError):
        greedy_upgrades(Problem(np.ones((7, 2)), costs, {"avg_bits": 1.0}))
