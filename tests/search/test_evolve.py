"""Evolved-proxy programs: evaluation, guards, serialisation, rank correlation, ground-truth
sampling and the evolution loop on a synthetic problem with a known best program."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import kendalltau, spearmanr

from search.evolved.genetic import SEEDS, GeneticParams, crossover, genetic_search, mutate, random_program
from search.evolved.ground_truth import rank_corr, sample_policies, split
from search.evolved.program import Primitives, Program, ProgramError, compatible, predict, scores


def prims(L=6, K=4, S=64, seed=0) -> Primitives:
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(L, S))
    dW = rng.normal(size=(L, K, S)) * (2.0 ** -np.arange(K))[None, :, None]
    return Primitives(W, rng.normal(size=(L, S)), rng.random((L, S)), rng.random((L, S)), dW,
                      np.full(L, 1000.0), np.array([False] * (K - 1) + [True]))


def test_evaluation_matches_hand_computation_and_float_is_zero():
    p = prims()
    prog = Program("sum", ("bin", "mul", ("leaf", "F"), ("un", "square", ("leaf", "dW"))))
    got = scores(prog, p)
    want = (p.F[:, None, :] * p.dW ** 2).sum(-1) * (1000.0 / 64)
    want[:, -1] = 0
    assert np.allclose(got, want)
    mean = scores(Program("mean", ("un", "abs", ("leaf", "dW"))), p)
    assert np.allclose(mean[:, :-1], np.abs(p.dW).mean(-1)[:, :-1])


def test_guards_division_by_zero_and_log_of_negatives():
    p = prims()
    p.G[:] = 0.0
    t = scores(Program("sum", ("bin", "div", ("leaf", "dW"), ("leaf", "G"))), p)
    assert np.all(np.isfinite(t))
    t = scores(Program("sum", ("un", "log1p", ("un", "neg", ("un", "abs", ("leaf", "dW"))))), p)
    assert np.all(np.isfinite(t)) and np.all(t[:, :-1] > 0)
    t = scores(Program("sum", ("un", "sqrt", ("un", "neg", ("leaf", "dW")))), p)
    assert np.all(np.isfinite(t))


def test_screen_rejects_nonfinite_and_constant_tables():
    assert compatible(np.array([[1.0, np.inf]])) == "non-finite output"
    assert compatible(np.ones((3, 2))) == "constant output"
    assert compatible(np.array([[1.0, 2.0], [3.0, 0.0]])) is None
    p = prims()
    p.W[:] = 1e200
    exploded = scores(Program("sum", ("un", "square", ("bin", "mul", ("leaf", "W"), ("leaf", "dW")))), p)
    assert compatible(exploded) == "non-finite output"


def test_serialisation_round_trip_and_bad_programs():
    rng = np.random.default_rng(1)
    for _ in range(50):
        p = random_program(rng, 4)
        q = Program.from_dict(json.loads(json.dumps(p.to_dict())))
        assert q == p and q.formula() == p.formula()
    assert SEEDS[0].formula() == "sum((F * square(dW)))"
    with pytest.raises(ProgramError):
        Program("sum", ("leaf", "X"))
    with pytest.raises(ProgramError):
        Program("max", ("leaf", "dW"))
    with pytest.raises(ProgramError):
        Program.from_dict({"reduce": "sum"})


def test_kendall_and_spearman_match_scipy():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=40), rng.normal(size=40)
    b = a + 0.5 * b
    tau, rho = rank_corr(a, b)
    assert tau == pytest.approx(kendalltau(a, b).statistic) and rho == pytest.approx(spearmanr(a, b).statistic)
    assert rank_corr(np.ones(5), a[:5]) == (0.0, 0.0)
    assert rank_corr(a, a)[0] == pytest.approx(1.0)


def test_mutation_and_crossover_keep_programs_valid():
    rng = np.random.default_rng(0)
    pop = [random_program(rng, 4) for _ in range(20)]
    for i in range(200):
        a, b = pop[i % 20], pop[(i * 7) % 20]
        for q in (mutate(a, rng, 4), crossover(a, b, rng, 4)):
            assert q.depth() <= 5 and "dW" in q.formula()


def test_sampled_policies_span_the_budget_range_deterministically():
    numel = np.array([100.0, 200, 300, 400])
    bits = np.array([2, 3, 4, 8, 16], float)
    costs = numel[:, None] * bits[None, :]
    a = sample_policies(costs, numel, 40, seed=5)
    assert np.array_equal(a, sample_policies(costs, numel, 40, seed=5))
    avg = (costs[np.arange(4)[None, :], a].sum(1)) / numel.sum()
    assert avg.min() < 4 and avg.max() > 8  # spread across the range
    tr, ho = split(40, 0.3, seed=5)
    assert len(set(tr) & set(ho)) == 0 and len(tr) + len(ho) == 40
    with pytest.raises(ValueError):
        split(40, 0.95, 0)


def test_evolution_finds_a_program_that_ranks_a_known_truth():
    """Truth is Σ_l Σ_s A·|dW| (a program outside the seeds); evolution must rank it well on
    held-out policies, better than every seed program does."""
    p = prims(L=8, K=5, S=48, seed=2)
    target = Program("sum", ("bin", "mul", ("leaf", "A"), ("un", "abs", ("leaf", "dW"))))
    choices = np.random.default_rng(0).integers(0, 5, size=(80, 8))
    truth = predict(scores(target, p), choices)
    train, hold = split(80, 0.3, 0)
    res = genetic_search(p, choices, truth, train, hold, GeneticParams(population=24, generations=10, seed=0))
    seed_best = max(rank_corr(predict(scores(s, p), choices[hold]), truth[hold])[0] for s in SEEDS)
    assert res.tau_holdout > 0.9 and res.tau_holdout >= seed_best
    assert len(res.history) == 10 and res.history[-1]["best_tau"] >= res.history[0]["best_tau"]
    again = genetic_search(p, choices, truth, train, hold, GeneticParams(population=24, generations=10, seed=0))
    assert again.best.program == res.best.program  # seeded and reproducible


def test_bad_evolution_parameters():
    for bad in (dict(population=0), dict(generations=0), dict(tournament=1), dict(mutation=1.5)):
        with pytest.raises(ValueError):
            GeneticParams(**bad).check()
