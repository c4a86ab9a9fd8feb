"""From request to plan without a model or torch: the checks that keep a doomed job out of the
queue (data sizes that would exhaust a worker, text too short for one window, typed parameters)
and the sensitivity key (unchanged for existing RTN tables)."""
from __future__ import annotations

import pytest

from service.jobspec import plan_job
from service.schemas import JobCreate

LAYERS = [{"name": f"model.layers.{i}.mlp.up_proj", "kind": "Linear", "shape": [256, 64], "numel": 16384,
           "in_features": 64, "macs": 16384} for i in range(4)]


def plan(kind: str = "causal_lm", max_positions: int | None = 8192, **body):
    req = JobCreate.model_validate({"model_id": "m", "budgets": {"avg_bits": 4.0}, **body})
    return plan_job(req, "builtin:smollm2-135m", "m", kind, LAYERS, max_positions)


@pytest.mark.parametrize("body,words", [
    ({"calibration": {"seq_len": 32768}}, ["seq_len=32768", "8..2048"]),
    ({"calibration": {"n_samples": 4096, "seq_len": 1024}}, ["4,194,304 tokens", "at most 32 samples"]),
    ({"evaluation": {"n_samples": 4096}}, ["evaluation", "at most 512 samples"]),
    ({"judge_samples": 60000}, ["judge_samples=60000 is too many"]),
    ({"quantizer": "gptq", "quantizer_params": {"n_samples": 3000}}, ["hessian", "tokens"]),
    ({"calibration": {"text": "far too short"}}, ["calibration.text is 13 bytes", "256 tokens"]),
    ({"proxy": "hessian_trace", "proxy_params": {"tol": "abc"}}, ["tol must be a number", "'abc'"]),
    ({"proxy": "fisher", "proxy_params": {"max_samples": True}}, ["max_samples must be a number, not true/false"]),
    ({"quantizer": "gptq", "quantizer_params": {"act_order": "yes"}}, ["act_order must be true or false"]),
])
def test_doomed_jobs_are_refused_before_queueing(body, words):
    with pytest.raises(ValueError) as e:
        plan(**body)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_the_model_positions_bound_seq_len():
    with pytest.raises(ValueError, match="use 1..128 .the model attends to 128 positions"):
        plan(kind="embedding", max_positions=128, calibration={"seq_len": 256})
    assert plan(kind="embedding", max_positions=512, calibration={"seq_len": 256}).specs[0]["seq_len"] == 256


def test_shared_uploaded_text_needs_two_paragraphs():
    text = "one paragraph " * 100
    with pytest.raises(ValueError, match="one paragraph"):
        plan(calibration={"text": text}, evaluation={"text": text})
    ok = plan(calibration={"text": text + "\n\n" + text}, evaluation={"text": text + "\n\n" + text})
    assert ok.texts["calib"] == ok.texts["eval"]


def test_typed_params_are_normalised_into_the_spec_key():
    """'0.2' from a form and 0.2 from JSON are the same request for the cache (same table)."""
    a = plan(proxy="hessian_trace", proxy_params={"tol": 0.2})
    b = plan(proxy="hessian_trace", proxy_params={"tol": "0.2"})
    assert a.sensitivity_key == b.sensitivity_key


@pytest.mark.parametrize("body,key", [
    # the recipe's proxy was `measured` for every kind when these were recorded; a causal LM's
    # recipe is fisher now (a different table, so a different key), so they name it
    ({"proxy": "measured"}, "93cbde711e5639c16ca97dfa5fe1a449e8c6494641ce985387ec2b77ca62988c"),
    ({"proxy": "hessian_trace", "proxy_params": {"tol": 0.2}},
     "168a023039f0ee95329eac6668571457a701d366dc4dc4bd50c9023c70e072dd"),
    ({"proxy": "measured", "quantizer": "gptq", "quantizer_params": {"damp": 0.05}},
     "b03a634777a5cec9dc666697b64c9eb5a2d34581a92472a1d3472dc30ec67f22"),
])
def test_sensitivity_keys_did_not_move(body, key):
    """Keys computed by the code before parameters were typed in search.params (golden values
    from that code): the tables already stored under them stay valid."""
    assert plan(**body).sensitivity_key == key


def test_measuring_every_cell_is_another_table():
    """``extrapolate`` at its default keeps the key tables were stored under; asking for every
    cell measured (null) or another ratio is another table."""
    default = plan(proxy="measured").sensitivity_key
    assert plan(proxy="measured", proxy_params={"extrapolate": 64}).sensitivity_key == default
    exact = plan(proxy="measured", proxy_params={"extrapolate": None}).sensitivity_key
    assert len({default, exact, plan(proxy="measured", proxy_params={"extrapolate": 16}).sensitivity_key}) == 3


def test_a_causal_lms_recipe_is_keyed_by_the_proxy_it_runs():
    recipe, measured = plan(), plan(proxy="measured")
    assert recipe.specs[0]["proxy"] == "fisher" and recipe.specs[0]["refine_method"] == "loop"
    assert recipe.sensitivity_key != measured.sensitivity_key
    assert recipe.sensitivity_key == plan(proxy="fisher").sensitivity_key  # the same table as asking for fisher
    enc = plan(kind="embedding", max_positions=512)
    assert enc.specs[0]["proxy"] == "measured" and enc.specs[0]["refine_method"] == "moves"


def test_a_request_and_a_spec_name_each_value_once():
    """DESIGN §2, one name per concept: a request field is a spec field of the same name, a group
    whose names REQUEST_NAMES maps, or one of the few that are no spec field; the spec holds no
    field under a second name."""
    from search.spec import NOT_SPEC_FIELDS, REQUEST_NAMES, SearchSpec
    from service.schemas import Data, Formats
    spec_fields = set(SearchSpec.model_fields)
    for name in JobCreate.model_fields:
        assert name in spec_fields or name in NOT_SPEC_FIELDS, name
    groups = {"formats": Formats, "calibration": Data, "evaluation": Data}
    for (group, name), field in REQUEST_NAMES.items():
        assert name in groups[group].model_fields and field in spec_fields
    renamed = set(REQUEST_NAMES.values())
    assert not renamed & set(JobCreate.model_fields), "a spec field reached under two names"
    # inline text is the one group field left: the worker writes it to a file source
    assert {n for m in groups.values() for n in m.model_fields} - {n for _, n in REQUEST_NAMES} == {"text"}


@pytest.mark.parametrize("body", [
    {},
    {"budgets": [{"avg_bits": 3.3}, {"avg_bits": 4.2}], "formats": {"bits": [2, 4], "group_size": None},
     "calibration": {"source": "tinyshakespeare", "n_samples": 4, "seq_len": 64}, "evaluation": {"n_samples": 6},
     "runtime": "vllm", "proxy": "fisher", "quantizer": "gptq"},
    {"calibration": {"text": "one paragraph.\n\nanother paragraph " * 40}, "seed": 3},
])
def test_the_dispatcher_maps_a_stored_request_to_the_specs_the_api_checked(body):
    """``launch_specs`` (the dispatcher) and ``plan_job`` (the API) map through the same function:
    the same specs and texts, without the dispatcher validating anything."""
    from service.jobspec import launch_specs
    req = JobCreate.model_validate({"model_id": "m", "budgets": {"avg_bits": 4.0}, **body})
    planned = plan_job(req, "builtin:smollm2-135m", "m", "causal_lm", LAYERS, 8192)
    stored = JobCreate.model_validate(req.model_dump(mode="json"))
    specs, texts = launch_specs(stored, "builtin:smollm2-135m", "causal_lm")
    assert specs == planned.specs and texts == planned.texts
