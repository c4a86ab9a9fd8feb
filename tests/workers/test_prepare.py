"""The prepare step's cache key: derived from every spec field the prepared data depend on and
from none of the others; every SearchSpec field must be classified. And the cache itself: a
reused data part gets the new spec's job part, with its checks."""
from __future__ import annotations

import pytest

from search.spec import SearchSpec
from workers.prepare import JOB_FIELDS, PREPARE_FIELDS, prepare_key

BASE = {"model": "builtin:digits-cnn", "budgets": {"avg_bits": 4.0}}
# a value other than the default for every SearchSpec field (a new field needs one here, and a
# place in PREPARE_FIELDS or JOB_FIELDS of workers/prepare.py)
CHANGED = {
    "version": 2, "model": "builtin:minilm-l6", "budgets": {"avg_bits": 3.0}, "bits": [2, 4], "group_size": 64,
    "symmetric": True, "format_names": ["q4_K"], "target": "torchao", "proxy": "fisher", "proxy_params": {"max_samples": 8}, "solver": "lp",
    "solver_params": {"population": 8}, "refine": False, "refine_evals": 7, "refine_patience": 9, "refine_seconds": 5.0,
    "refine_method": "loop", "judge_samples": 0, "compute_dtype": "float32", "calib": "digits", "eval": "digits", "n_calib": 64, "n_eval": 99,
    "seq_len": 32, "seed": 1, "ties": ["attention"], "include_embeddings": True, "include_head": True,
    "latency_table": {"conv1": {"w4g64": 1.0}}, "a_bits": 8, "quantizer": "gptq", "quantizer_params": {"damp": 0.02},
    "image_size": 32, "resize": 64, "image_mean": [0.5], "image_std": [0.5], "data_column": "img",
    "label_column": "y", "fold_batchnorm": True, "device": "cpu", "offload": True,
}


def key(**kw) -> str:
    # model_construct: the key reads fields; which values the spec's validators accept is not its concern
    return prepare_key(SearchSpec.model_construct(**{**BASE, **kw}))


def test_every_spec_field_is_classified_once():
    fields = set(SearchSpec.model_fields)
    assert not set(PREPARE_FIELDS) & set(JOB_FIELDS)
    unclassified = fields - set(PREPARE_FIELDS) - set(JOB_FIELDS)
    assert not unclassified, (f"SearchSpec fields {sorted(unclassified)} are in neither PREPARE_FIELDS (the prepared "
                              "data depend on them) nor JOB_FIELDS (they do not) of workers/prepare.py")
    assert set(PREPARE_FIELDS) | set(JOB_FIELDS) == fields  # no stale names either
    assert set(CHANGED) == fields, f"give a changed value for {sorted(fields - set(CHANGED))} in CHANGED"


@pytest.mark.parametrize("name", sorted(SearchSpec.model_fields))
def test_the_key_changes_exactly_with_the_fields_the_value_depends_on(name):
    default = SearchSpec.model_construct(**BASE)
    assert getattr(default, name) != CHANGED[name], "CHANGED must hold a value other than the base spec's"
    if name in PREPARE_FIELDS:
        assert key(**{name: CHANGED[name]}) != key(), f"{name} changes the prepared data: the key must change"
    else:
        assert key(**{name: CHANGED[name]}) == key(), f"{name} does not change the prepared data: the key must not"


def test_the_key_changes_with_the_weights_and_the_evaluation_batches():
    spec = SearchSpec(**BASE)
    assert prepare_key(spec, "a" * 64) != prepare_key(spec, "b" * 64)
    assert prepare_key(spec, "a" * 64, with_evals=False) != prepare_key(spec, "a" * 64)
    # a job's whole spec changed in every job field at once: still the same data
    assert key(**{f: CHANGED[f] for f in JOB_FIELDS}) == key()


def test_the_format_menu_is_in_the_key():
    """The bug that made the key explicit: a worker served one job's formats to a job with another menu."""
    keys = {key(**kw) for kw in ({}, {"bits": [2, 4]}, {"group_size": 64}, {"group_size": None},
                                 {"symmetric": True})}
    assert len(keys) == 5


@pytest.mark.integration
def test_a_cached_data_part_gets_each_spec_its_own_job_part():
    """Same key: the batches and quantizer are reused, but the job part (costs, budgets, recipe)
    and its checks are the new spec's. Another key on the same model: new data, same weights."""
    from search.budgets import BudgetError
    from workers.prepare import PrepareCache, prepare

    cache = PrepareCache()
    spec = SearchSpec(**BASE, bits=[2, 4], group_size=16, n_calib=16)
    a = prepare(spec, with_evals=False, cache=cache)
    b = prepare(spec.model_copy(update={"budgets": {"avg_bits": 3.5}, "a_bits": 8, "proxy": "fisher"}),
                with_evals=False, cache=cache)
    assert b.calib is a.calib and b.quantizer is a.quantizer and b.lm is a.lm  # no data pass again
    assert b.spec.budgets == {"avg_bits": 3.5} and b.loaded.costs.a_bits == 8 and b.proxy.name == "fisher"
    assert a.spec.budgets == {"avg_bits": 4.0} and a.loaded.costs.a_bits == 16
    with pytest.raises(BudgetError, match="below the cheapest"):  # a cached value skips no check
        prepare(spec.model_copy(update={"budgets": {"avg_bits": 0.5}}), with_evals=False, cache=cache)
    c = prepare(spec.model_copy(update={"n_calib": 32}), with_evals=False, cache=cache)
    assert c.lm is a.lm and c.calib is not a.calib
    assert c.info["samples"] == 32 and a.info["samples"] == 16 and not c.evals
    fresh = prepare(spec, with_evals=False)  # no cache: the same data as the cached value
    assert fresh.info == a.info and [f.label for f in fresh.formats] == [f.label for f in a.formats]
