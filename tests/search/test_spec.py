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


# ------------------------------------------------------------------ the one request → spec mapping
def _request_value(field: str):
    """A value for a mapped field that no default has."""
    return {"bits": [2, 4], "group_size": [64, None], "symmetric": True, "calib": "tinyshakespeare", "n_calib": 7,
            "seq_len": 48, "eval": "pydoc", "n_eval": 9}[field]


def test_every_mapped_name_lands_on_its_spec_field_and_maps_back():
    """Each (group, name) of the request reaches the spec field REQUEST_NAMES names, and reading
    the spec back through the same table gives the request's values again."""
    from search.spec import REQUEST_NAMES, specs_from_request
    request: dict = {"budgets": {"avg_bits": 3.3}, "formats": {}, "calibration": {}, "evaluation": {}}
    # one seq_len: the calibration's wins (next test); a menu by names excludes bits (its own test)
    mapped = {k: v for k, v in REQUEST_NAMES.items() if k not in (("evaluation", "seq_len"), ("formats", "names"))}
    for (group, name), field in mapped.items():
        request[group][name] = _request_value(field)
    (s,) = specs_from_request(request, "builtin:smollm2-135m")
    assert set(REQUEST_NAMES.values()) <= set(SearchSpec.model_fields)
    for (group, name), field in mapped.items():
        assert getattr(s, field) == _request_value(field), field
    back = {group: {name: getattr(s, field) for (g, name), field in mapped.items() if g == group}
            for group in ("formats", "calibration", "evaluation")}
    assert all(back[g][n] == request[g][n] for g in request if g != "budgets" for n in request[g])


def test_seq_len_is_the_calibrations_else_the_evaluations():
    from search.spec import specs_from_request
    base = {"budgets": {"avg_bits": 3.3}}
    both = {"calibration": {"seq_len": 64}, "evaluation": {"seq_len": 128}}
    assert specs_from_request({**base, **both}, "m")[0].seq_len == 64
    assert specs_from_request({**base, "evaluation": {"seq_len": 128}}, "m")[0].seq_len == 128
    assert specs_from_request(base, "m")[0].seq_len is None


def test_absent_formats_keep_the_default_menu_and_null_means_per_channel():
    from search.defaults import DEFAULT_BITS, DEFAULT_GROUP_SIZES
    from search.spec import specs_from_request
    base = {"budgets": {"avg_bits": 3.3}}
    (s,) = specs_from_request(base, "m")
    assert s.bits is None and s.group_size == list(DEFAULT_GROUP_SIZES)
    assert {f.bits for f in s.menu()} == set(DEFAULT_BITS) and {f.group_size for f in s.menu()} == set(DEFAULT_GROUP_SIZES)
    assert specs_from_request({**base, "formats": {"group_size": None}}, "m")[0].group_size is None


def test_same_named_fields_are_copied_and_the_rest_is_refused():
    """Fields with one name on both sides pass as they are; the runtime adds its ties; a name
    the spec does not know is an error, never dropped silently."""
    from pydantic import ValidationError

    from search.spec import specs_from_request
    base = {"model_id": "abc", "budgets": [{"avg_bits": 3.3}, {"avg_bits": 4.2}], "proxy": "fisher", "seed": 5,
            "quantizer": "gptq", "quantizer_params": {"damp": 0.05}, "ties": ["qkv"], "runtime": "vllm",
            "fold_batchnorm": True, "calibration": {"text": "inline text is not a spec field"}}
    specs = specs_from_request(base, "builtin:smollm2-135m", "causal_lm")
    assert [s.budgets for s in specs] == [{"avg_bits": 3.3}, {"avg_bits": 4.2}]
    s = specs[0]
    assert (s.model, s.proxy, s.seed, s.quantizer, s.quantizer_params, s.fold_batchnorm) == (
        "builtin:smollm2-135m", "fisher", 5, "gptq", {"damp": 0.05}, True)
    assert {"qkv", "gate_up"} <= set(s.ties)
    assert s.refine_method == "moves"  # the kind's recipe was applied (a named proxy: moves)
    with pytest.raises(ValidationError, match="colour"):
        specs_from_request({"budgets": {"avg_bits": 3.3}, "colour": "red"}, "m")
