"""The comparison passes' dtype (proxies/precision.py): names resolve as documented, bf16 runs
the matrix products in bf16 and only there, a measured table says which dtype measured it and
ranks the cells as float32 does, and the judge compares in bf16 while metrics stay float32."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from proxies.base import ProxyContext
from proxies.discovery import discover_layers
from proxies.evaluate import Evaluator
from proxies.measured import MeasuredProxy
from proxies.precision import comparison_precision, native_bf16, resolve_compute_dtype
from proxies.tasks import ClassifierTask
from search.formats import make_formats
from search.spec import SearchSpec

FORMATS = make_formats([2, 3, 4, 8], group_size=16)


def test_names_resolve_and_auto_follows_the_hardware():
    assert resolve_compute_dtype("float32") == "float32"
    assert resolve_compute_dtype(" BFloat16 ") == "bfloat16"
    assert resolve_compute_dtype("auto", "cpu") == ("bfloat16" if native_bf16("cpu") else "float32")
    assert resolve_compute_dtype(None, "cpu") == resolve_compute_dtype("auto", "cpu")
    assert resolve_compute_dtype("auto", "mps") == "float32"  # no native bf16 path known there
    with pytest.raises(ValueError, match="not one of auto, float32, bfloat16"):
        resolve_compute_dtype("float16")


def test_a_spec_refuses_another_dtype():
    with pytest.raises(ValidationError, match="compute_dtype"):
        SearchSpec(model="builtin:digits-cnn", budgets={"avg_bits": 4}, compute_dtype="float16")


def test_bf16_runs_the_products_in_bf16_and_float32_changes_nothing():
    lin, x = nn.Linear(8, 4), torch.randn(3, 8)
    with comparison_precision("bfloat16", "cpu"):
        assert lin(x).dtype == torch.bfloat16
    with comparison_precision("float32", "cpu"), comparison_precision(None, "cpu"):
        assert torch.equal(lin(x), lin(x)) and lin(x).dtype == torch.float32
    assert lin(x).dtype == torch.float32  # nothing leaks out of the context


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    with torch.no_grad():
        x = torch.randn(256, 32)
        y = model(x).argmax(-1)
    batches = ClassifierTask().prepare(model, [{"x": a, "y": b} for a, b in zip(x.split(64), y.split(64))])
    pairs = discover_layers(model, lambda m: m(torch.zeros(1, 32)))
    return model, [p[0] for p in pairs], [p[1] for p in pairs], batches


def _ctx(mlp, dtype: str) -> ProxyContext:
    model, layers, modules, batches = mlp
    return ProxyContext(model, layers, modules, ClassifierTask(), batches, FORMATS, compute_dtype=dtype)


def test_a_bf16_table_says_so_and_ranks_the_cells_as_float32_does(mlp):
    t32 = MeasuredProxy().compute(_ctx(mlp, "float32"))
    t16 = MeasuredProxy().compute(_ctx(mlp, "bfloat16"))
    assert "compute_dtype" not in t32.params  # float32 tables keep the keys they always had
    assert t16.params["compute_dtype"] == "bfloat16" and t16.key != t32.key
    # the cells that decide an allocation (2-4 bits) keep their order and nearly their size
    low = slice(0, 3)
    a, b = t32.values[:, low].ravel(), t16.values[:, low].ravel()
    assert np.array_equal(np.argsort(a), np.argsort(b))
    np.testing.assert_allclose(b, a, rtol=0.15, atol=2e-3)
    assert all(m.weight.dtype == torch.float32 for m in mlp[2])  # the weights come back as they were


def test_the_judge_compares_in_bf16_and_metrics_stay_float32(mlp):
    model, _, modules, batches = mlp
    choice = np.array([0, 1, 2])
    formats = [FORMATS[k] for k in choice]
    e32 = Evaluator(model, modules, ClassifierTask())
    e16 = Evaluator(model, modules, ClassifierTask(), compute_dtype="bfloat16")
    assert e16.metrics(formats, batches) == e32.metrics(formats, batches)  # what a user reads: float32
    j32, j16 = e32.judge(FORMATS, batches, race=False), e16.judge(FORMATS, batches, race=False)
    exact, fast = j32(choice), j16(choice)
    assert fast != exact and fast == pytest.approx(exact, rel=0.05)
