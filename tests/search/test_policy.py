"""The canonical policy document bitplan.policy/v1: round trip and strict validation."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from search.budgets import CostModel
from search.formats import Format
from search.layers import LayerInfo
from search.policy import SCHEMA, Measured, Policy, Predicted, SolverInfo, build_policy
from search.problem import Problem
from search.solvers.ilp import ILPSolver

LAYERS = [
    LayerInfo("encoder.layer.0.attention.self.query", "linear", (384, 384), 147456, 384, 147456),
    LayerInfo("encoder.layer.0.intermediate.dense", "linear", (1536, 384), 589824, 384, 589824),
    LayerInfo("encoder.layer.0.output.dense", "linear", (384, 1536), 589824, 1536, 589824),
]
FORMATS = [Format(3, 64, False), Format(4, 128, True), Format(16)]


def make_policy(choice=(0, 1, 2), **extra) -> Policy:
    costs = CostModel(LAYERS, FORMATS)
    choice = np.array(choice)
    return build_policy("builtin:minilm-l6", "ab" * 32, LAYERS, FORMATS, choice, {"avg_bits": 8.0},
                        costs.cost(choice), **extra)


def test_build_policy_layers_and_float_layers():
    p = make_policy()
    assert p.schema_ == SCHEMA
    assert [l.name for l in p.layers] == [LAYERS[0].name, LAYERS[1].name]
    assert p.float_layers == [LAYERS[2].name]
    assert (p.layers[0].bits, p.layers[0].group_size, p.layers[0].symmetric, p.layers[0].numel) == (3, 64, False, 147456)
    assert (p.layers[1].bits, p.layers[1].group_size, p.layers[1].symmetric) == (4, 128, True)
    assert p.cost["bops"] is not None  # CostModel knows bops, build_policy keeps it
    assert set(p.cost) >= {"avg_bits", "size_bytes", "bops"}


def test_assignment():
    p = make_policy()
    assert p.assignment() == {LAYERS[0].name: Format(3, 64, False), LAYERS[1].name: Format(4, 128, True)}
    assert LAYERS[2].name not in p.assignment()


def test_json_document_shape():
    doc = json.loads(make_policy().to_json())
    assert doc["schema"] == "bitplan.policy/v1"
    assert "schema_" not in doc
    assert doc["model"] == {"ref": "builtin:minilm-l6", "sha256": "ab" * 32}
    assert doc["quantizer"] == {"method": "rtn", "scale_dtype": "float16"}
    assert all(l["bits"] != 16 for l in doc["layers"])
    assert doc["budget"] == {"avg_bits": 8.0}


def test_round_trip_minimal():
    p = make_policy()
    assert Policy.from_json(p.to_json()) == p
    assert Policy.from_json(p.to_json(indent=None)) == p


def test_round_trip_full():
    costs = CostModel(LAYERS, FORMATS)
    loss = np.array([[0.3, 0.1, 0.0], [0.5, 0.2, 0.0], [0.9, 0.4, 0.0]])
    problem = Problem(loss, costs, {"avg_bits": 4.5})
    sol = ILPSolver().solve(problem)
    p = build_policy("hf:/models/x", "cd" * 32, LAYERS, FORMATS, sol.choice, problem.budgets, costs.cost(sol.choice),
                     ties=[[LAYERS[1].name, LAYERS[2].name]],
                     predicted=Predicted(proxy="hessian_trace", loss_increase=sol.objective),
                     measured=Measured(metric="embedding_cosine_loss", value=0.081, float=0.0,
                                       uniform={"3": 0.137, "4": 0.034}),
                     solver=SolverInfo(**sol.to_dict()),
                     refine={"evals": 3, "history": [{"eval": 2, "measured": 0.1}]})
    text = p.to_json()
    q = Policy.from_json(text)
    assert q == p
    assert q.solver.model_extra["status"] == sol.info["status"]  # solver extras survive
    assert q.measured.uniform == {"3": 0.137, "4": 0.034}
    assert q.to_json() == text


def test_from_json_rejects_wrong_or_missing_schema():
    doc = json.loads(make_policy().to_json())
    for bad in ("bitplan.policy/v2", "bitplan.sensitivity/v1", None):
        doc["schema"] = bad
        with pytest.raises(ValueError, match="bitplan.policy/v1"):
            Policy.from_json(json.dumps(doc))
    del doc["schema"]
    with pytest.raises(ValueError, match="bitplan.policy/v1"):
        Policy.from_json(json.dumps(doc))
    with pytest.raises(ValueError):
        Policy.from_json("[1, 2]")


def test_from_json_rejects_unknown_fields():
    doc = json.loads(make_policy().to_json())
    with pytest.raises(ValidationError, match="extra"):
        Policy.from_json(json.dumps({**doc, "comment": "hi"}))
    doc2 = json.loads(make_policy().to_json())
    doc2["layers"][0]["scale_bits"] = 8
    with pytest.raises(ValidationError):
        Policy.from_json(json.dumps(doc2))
    doc3 = json.loads(make_policy().to_json())
    doc3["model"]["url"] = "http://x"
    with pytest.raises(ValidationError):
        Policy.from_json(json.dumps(doc3))


@pytest.mark.parametrize("bits", [16, 1, 9, 32])
def test_from_json_rejects_bad_bits_in_layers(bits):
    doc = json.loads(make_policy().to_json())
    doc["layers"][0]["bits"] = bits
    with pytest.raises(ValidationError, match="bits"):
        Policy.from_json(json.dumps(doc))


def test_from_json_rejects_bad_numel_and_quantizer():
    doc = json.loads(make_policy().to_json())
    doc["layers"][0]["numel"] = 0
    with pytest.raises(ValidationError):
        Policy.from_json(json.dumps(doc))
    doc = json.loads(make_policy().to_json())
    doc["quantizer"]["method"] = "awq"
    with pytest.raises(ValidationError):
        Policy.from_json(json.dumps(doc))


def test_all_float_policy_has_no_layers():
    p = make_policy(choice=(2, 2, 2))
    assert p.layers == [] and len(p.float_layers) == 3
    assert p.assignment() == {}
    assert Policy.from_json(p.to_json()) == p
    assert p.cost["avg_bits"] == 16.0
