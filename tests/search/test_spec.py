"""The search spec's recipe by model kind and its device check: pure validation, no torch."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from search.spec import SearchSpec


def spec(**kw) -> SearchSpec:
    return SearchSpec(model="builtin:smollm2-135m", budgets={"avg_bits": 3.3}, **kw)


def test_causal_lms_get_fisher_and_the_loop_others_measured_and_moves():
    lm = spec().with_recipe("causal_lm")
    assert (lm.proxy, lm.refine, lm.refine_method, lm.do_refine) == ("fisher", True, "loop", True)
    enc = spec().with_recipe("embedding")
    assert (enc.proxy, enc.refine_method, enc.do_refine) == ("measured", "moves", True)


def test_refine_time_by_model_kind_unless_given():
    from search.defaults import DEFAULT_REFINE_SECONDS, REFINE_SECONDS
    assert spec().refine_seconds is None
    assert spec().with_recipe("causal_lm").refine_seconds == REFINE_SECONDS["causal_lm"]
    assert spec().with_recipe("embedding").refine_seconds == DEFAULT_REFINE_SECONDS
    assert spec(refine_seconds=30).with_recipe("causal_lm").refine_seconds == 30
    assert spec(proxy="fisher", refine_seconds=None).with_recipe("causal_lm").refine_seconds == REFINE_SECONDS["causal_lm"]
    with pytest.raises(ValidationError, match="refine_seconds"):
        spec(refine_seconds=0)


def test_what_the_user_names_is_kept():
    assert spec(refine=False).with_recipe("causal_lm").do_refine is False
    assert spec(refine_method="moves").with_recipe("causal_lm").refine_method == "moves"
    named = spec(proxy="hessian_trace").with_recipe("causal_lm")
    assert named.proxy == "hessian_trace" and named.refine_method == "moves" and named.do_refine is False
    # parameters for the recipe's measured proxy mean the user wants measured
    assert spec(proxy_params={"context": "w3g64a"}).with_recipe("causal_lm").proxy is None


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps", " CUDA "])
def test_devices_accepted(device):
    assert spec(device=device).device == device


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "gpu", ""])
def test_devices_refused(device):
    with pytest.raises(ValidationError, match="is not one of auto, cpu, cuda"):
        spec(device=device)
