"""The evolved proxy (EMQ) on real models: evolve for a few generations on the digits CNN, store
the winner, re-use it by name on another model, and refuse bad parameters before any work."""
from __future__ import annotations

import json

import pytest
import torch

from proxies.registry import get_proxy
from search.spec import SearchSpec
from workers.pipeline import run_search

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("BITPLAN_EVOLVED_DIR", str(tmp_path / "evolved"))
    return tmp_path / "evolved"


def _scripted(tmp_path, layers: int) -> str:
    mods = [torch.nn.Flatten()] + ([torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)]
                                   if layers == 2 else [torch.nn.Linear(64, 10)])
    torch.manual_seed(0)
    path = tmp_path / f"m{layers}.pt"
    torch.jit.save(torch.jit.script(torch.nn.Sequential(*mods)), str(path))
    return f"torchscript:{path}"


def test_evolve_on_digits_store_and_reuse_on_another_model(store, tmp_path):
    spec = SearchSpec(model="builtin:digits-cnn", budgets={"avg_bits": 3.5}, bits=[2, 3, 4, 8], group_size=64,
                      proxy="evolved", proxy_params={"name": "digits-test", "generations": 3, "population": 12,
                                                     "n_policies": 24}, solver="ilp", n_calib=128, n_eval=256)
    phases = []
    res = run_search(spec, lambda ph, f, m: phases.append((ph, m)))
    doc = json.loads((store / "digits-test.json").read_text())
    assert doc["schema"] == "bitplan.evolved/v1" and doc["program"]["formula"] == res.table.diagnostics["formula"]
    assert len(doc["history"]) == 3 and len(doc["ground_truth"]["loss"]) == 24
    assert -1 <= doc["tau_holdout"] <= 1 and doc["tau_train"] > 0.3  # it learned something on the train part
    assert any(m.startswith("generation 3/3") for ph, m in phases if ph == "sensitivity")
    assert res.policy.cost["avg_bits"] <= 3.5 + 1e-9

    other = _scripted(tmp_path, 2)
    reuse = run_search(SearchSpec(model=other, budgets={"avg_bits": 4.0}, bits=[2, 4, 8], group_size=32,
                                  proxy="evolved:digits-test", solver="ilp", n_calib=64, n_eval=128, calib="digits"))
    assert reuse.table.proxy == "evolved" and reuse.table.diagnostics["formula"] == doc["program"]["formula"]
    assert reuse.table.diagnostics["evolved_on"] == doc["model_sha256"]
    assert reuse.policy.cost["avg_bits"] <= 4.0 + 1e-9


def test_bad_parameters_fail_before_any_work(tmp_path):
    for bad, words in ((dict(population=0), "population"), (dict(n_policies=3), "n_policies"),
                       (dict(generations=0), "generations"), (dict(holdout=0.99), "holdout"),
                       (dict(name="../x"), "name")):
        with pytest.raises(ValueError, match=words):
            get_proxy("evolved", **bad)
    with pytest.raises(ValueError, match="no stored evolved proxy 'nope'"):
        get_proxy("evolved:nope")
    one = _scripted(tmp_path, 1)
    with pytest.raises(ValueError, match="at least 2"):
        run_search(SearchSpec(model=one, budgets={"avg_bits": 4.0}, proxy="evolved", solver="ilp", calib="digits"))
    two = _scripted(tmp_path, 2)
    with pytest.raises(ValueError, match="distinct"):
        run_search(SearchSpec(model=two, budgets={"avg_bits": 4.0}, bits=[2, 4], group_size=64, proxy="evolved",
                              proxy_params={"n_policies": 10}, solver="ilp", calib="digits"))
