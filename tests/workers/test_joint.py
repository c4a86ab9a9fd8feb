"""Joint search (APQ) as a job: its parameters refused before any work, and on the digits CNN a
sparse policy within every budget (the torch parts are tested in tests/proxies/test_joint.py)."""
from __future__ import annotations

import pytest

from search.spec import SearchSpec
from workers.pipeline import run_search


def test_bad_joint_parameters_fail_before_any_work():
    base = dict(model="builtin:digits-cnn", budgets={"avg_bits": 3.0}, solver="joint")
    for params, words in (({"ratios": [0, 1.0]}, "pruning ratio"), ({"population": 0}, "population"),
                          ({"pretrain_samples": 2}, "pretrain_samples"), ({"colour": 1}, "joint has no parameter .colour."), ({"epochs": "many"}, "epochs must be an integer")):
        with pytest.raises(ValueError, match=words):
            run_search(SearchSpec(**base, solver_params=params))
    with pytest.raises(ValueError, match="takes no solver_params"):
        run_search(SearchSpec(model="builtin:digits-cnn", budgets={"avg_bits": 3.0}, solver="ilp",
                              solver_params={"population": 4}))


@pytest.mark.integration
def test_joint_on_digits_returns_a_sparse_feasible_policy():
    spec = SearchSpec(model="builtin:digits-cnn", budgets={"avg_bits": 3.0, "bops": 2e7}, bits=[2, 3, 4, 8],
                      group_size=64, solver="joint", n_calib=256, n_eval=512,
                      solver_params={"generations": 6, "pretrain_samples": 24, "finetune_samples": 12,
                                     "holdout_samples": 8, "epochs": 150, "finetune_epochs": 80})
    res = run_search(spec)
    p = res.policy
    assert p.cost["avg_bits"] <= 3.0 + 1e-9 and p.cost["bops"] <= 2e7 * (1 + 1e-9)
    assert p.solver.name == "joint" and p.sparse_format.startswith("bitmask")
    assert all(0 < r < 1 for r in p.sparsity.values())
    assert res.table is None and p.measured.metric == "kl_to_float"


@pytest.mark.integration
def test_structured_joint_on_digits():
    spec = SearchSpec(model="builtin:digits-cnn", budgets={"avg_bits": 3.0}, bits=[2, 3, 4, 8], group_size=64,
                      solver="joint", n_calib=256, n_eval=512,
                      solver_params={"structured": True, "generations": 4, "pretrain_samples": 16, "finetune_samples": 8,
                                     "holdout_samples": 4, "epochs": 60, "finetune_epochs": 30})
    p = run_search(spec).policy
    assert p.cost["avg_bits"] <= 3.0 + 1e-9 and p.sparse_format.startswith("structured")
