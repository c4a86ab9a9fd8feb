"""Exporters on a small Llama-shaped policy: golden files, tie handling, and a refused policy per
target. Regenerate the golden files with BITPLAN_REGEN_GOLDEN=1 after an intended change."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from search.exports import EXPORTERS, ExportError, export
from search.formats import Format
from search.layers import LayerInfo
from search.policy import Policy, Quantizer, build_policy

GOLDEN = Path(__file__).with_name("golden")
LEAVES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
          "mlp.up_proj", "mlp.down_proj"]


def llama_policy(fmt_of=None, symmetric=False, float_names=("model.layers.1.mlp.down_proj",)) -> Policy:
    layers = [LayerInfo(f"model.layers.{b}.{leaf}", "Linear", (64, 64), 4096, 64, 4096) for b in range(2) for leaf in LEAVES]
    fmts = [Format(4, 64, symmetric), Format(8, 128, symmetric), Format(16, None, False)]
    choice = []
    for l in layers:
        if l.name in float_names:
            choice.append(2)
        elif fmt_of:
            choice.append(fmt_of(l.name))
        else:
            choice.append(1 if ".0.self_attn" in l.name else 0)
    ties = [[f"model.layers.{b}.self_attn.{p}_proj" for p in "qkv"] for b in range(2)] + \
           [[f"model.layers.{b}.mlp.{p}_proj" for p in ("gate", "up")] for b in range(2)]
    return build_policy("hf:/models/tiny-llama", "0" * 64, layers, fmts, np.array(choice), {"avg_bits": 5.0},
                        {"avg_bits": 5.0}, ties)


@pytest.mark.parametrize("fmt", sorted(EXPORTERS))
def test_golden(fmt):
    out = export(llama_policy(lambda n: 1 if ".0.self_attn" in n else 0, symmetric=True), fmt)
    path = GOLDEN / f"llama-{fmt}.{out.filename.rsplit('.', 1)[1]}"
    if os.environ.get("BITPLAN_REGEN_GOLDEN"):
        path.write_text(out.text)
    assert out.text == path.read_text()


def test_fused_projections_get_one_pattern_that_matches_the_fused_name():
    out = json.loads(export(llama_policy(symmetric=True), "gptqmodel").text)["quantization_config"]
    pats = [k[2:] for k in out["dynamic"] if k.startswith("+:")]
    qkv = [p for p in pats if re.match(p, "model.layers.0.self_attn.q_proj")]
    assert len(qkv) == 1 and re.match(qkv[0], "model.layers.0.self_attn.qkv_proj")
    assert re.match(qkv[0], "model.layers.0.self_attn.v_proj") and not re.match(qkv[0], "model.layers.0.self_attn.o_proj")
    assert out["bits"] == 4 and "-:^model\\.layers\\.1\\.mlp\\.down_proj$" in out["dynamic"]
    ct = json.loads(export(llama_policy(symmetric=True), "compressed-tensors").text)["quantization_config"]
    assert ct["format"] == "mixed-precision" and "model.layers.1.mlp.down_proj" in ct["ignore"]
    assert all(t.startswith("re:^") and t.endswith("$") for g in ct["config_groups"].values() for t in g["targets"])


def test_untied_fused_layers_are_refused():
    bad = llama_policy(lambda n: 1 if n.endswith("q_proj") else 0, symmetric=True)
    for fmt in EXPORTERS:
        with pytest.raises(ExportError, match="tied layers"):
            export(bad, fmt)


@pytest.mark.parametrize("fmt,policy,words", [
    ("gptqmodel", lambda: _with_bits(6), "not supported"),
    ("compressed-tensors", lambda: _with_bits(6), "not an int width"),
    ("llmcompressor-recipe", lambda: _with_bits(5), "not an int width"),
    ("modelopt", lambda: llama_policy(), "asymmetric"),
    ("modelopt", lambda: _with_bits(3, symmetric=True), "not deployable"),
    ("llamacpp", lambda: _rename("transformer.h.0.attn"), "no GGUF name"),
    ("mlx", lambda: _with_bits(7), "MLX takes bits"),
])
def test_refused_policies(fmt, policy, words):
    with pytest.raises(ExportError, match=words):
        export(policy(), fmt)


def test_all_float_policy_is_refused_by_torchao():
    float_all = llama_policy(symmetric=True, float_names=tuple(f"model.layers.{b}.{leaf}" for b in range(2) for leaf in LEAVES))
    with pytest.raises(ExportError, match="quantizes no layer"):
        export(float_all, "torchao")


def test_pruned_policies_are_refused():
    p = llama_policy(symmetric=True)
    p.sparsity = {"model.layers.0.mlp.up_proj": 0.5}
    with pytest.raises(ExportError, match="cannot express pruning"):
        export(p, "gptqmodel")


def _with_bits(bits: int, symmetric: bool = False) -> Policy:
    p = llama_policy(symmetric=symmetric)
    d = json.loads(p.to_json())
    next(l for l in d["layers"] if l["name"] == "model.layers.1.self_attn.o_proj")["bits"] = bits  # untied layer
    return Policy.model_validate(d)


def _rename(name: str) -> Policy:
    d = json.loads(llama_policy(symmetric=True).to_json())
    d["layers"][3]["name"] = name
    d["ties"] = []
    return Policy.model_validate(d)


def test_runtime_ties():
    from search.layers import runtime_ties
    assert runtime_ties("vllm", []) == ["experts", "gate_up", "qkv"]
    assert runtime_ties(None, ["qkv"]) == ["qkv"] and runtime_ties("none", ["qkv"]) == ["qkv"]
    with pytest.raises(ValueError, match="unknown runtime"):
        runtime_ties("tgi", [])


def gptq_policy() -> Policy:
    p = llama_policy(symmetric=True)
    p.quantizer = Quantizer(method="gptq", damp=0.02, act_order=True)
    return p


def test_a_gptq_policy_exports_the_quantizer_it_was_measured_with():
    g = json.loads(export(gptq_policy(), "gptqmodel").text)["quantization_config"]
    assert (g["desc_act"], g["static_groups"], g["damp_percent"]) == (True, True, 0.02)
    ct = json.loads(export(gptq_policy(), "compressed-tensors").text)["quantization_config"]
    assert {grp["weights"]["actorder"] for grp in ct["config_groups"].values()} == {"weight"}
    recipe = export(gptq_policy(), "llmcompressor-recipe").text
    assert "GPTQModifier:" in recipe and "dampening_frac: 0.02" in recipe and "actorder: weight" in recipe
    assert "QuantizationModifier" not in recipe
    # an RTN policy says nothing of act-order and runs a plain QuantizationModifier
    rtn = export(llama_policy(symmetric=True), "llmcompressor-recipe").text
    assert "QuantizationModifier:" in rtn and "actorder" not in rtn


def moe_layers(style: str) -> list[LayerInfo]:
    """Two MoE blocks of 3 experts, Mixtral (w1/w3/w2) or Qwen-MoE (gate/up/down + a shared expert)."""
    out = []
    for b in range(2):
        if style == "mixtral":
            out.append(LayerInfo(f"model.layers.{b}.block_sparse_moe.gate", "Linear", (3, 64), 192, 64, 192))
            leaves, moe = ("w1", "w3", "w2"), f"model.layers.{b}.block_sparse_moe.experts"
        else:
            out += [LayerInfo(f"model.layers.{b}.mlp.shared_expert.{p}_proj", "Linear", (64, 64), 4096, 64, 4096)
                    for p in ("gate", "up", "down")]
            leaves, moe = ("gate_proj", "up_proj", "down_proj"), f"model.layers.{b}.mlp.experts"
        out += [LayerInfo(f"{moe}.{e}.{leaf}", "Linear", (64, 64), 4096, 64, 4096) for e in range(3) for leaf in leaves]
    return out


@pytest.mark.parametrize("style", ["mixtral", "qwen"])
def test_vllm_ties_every_expert_of_one_moe_block(style):
    from search.layers import find_tie_groups, runtime_ties
    layers = moe_layers(style)
    groups = find_tie_groups(layers, runtime_ties("vllm", [])).names(layers)
    experts = [g for g in groups if ".experts." in g[0]]
    assert len(experts) == 2 and all(len(g) == 9 for g in experts)  # 3 experts × 3 layers, merged with gate/up
    assert all({n.split(".experts.")[0] for n in g} == {g[0].split(".experts.")[0]} for g in experts)
    if style == "qwen":  # the shared expert is an ordinary MLP: only its gate/up are fused
        assert ["model.layers.0.mlp.shared_expert.gate_proj", "model.layers.0.mlp.shared_expert.up_proj"] in groups
    assert not any("block_sparse_moe.gate" in n for g in groups for n in g)  # the router is not an expert


def test_expert_pattern_matches_each_expert_and_the_fused_moe_module():
    from search.layers import find_tie_groups
    layers = moe_layers("qwen")
    ties = find_tie_groups(layers, ["experts", "gate_up"])
    fmts = [Format(4, 128, True), Format(8, 128, True)]
    choice = np.array([1 if "shared" in l.name else 0 for l in layers])
    pol = build_policy("hf:/m", "0" * 64, layers, fmts, choice, {"avg_bits": 5.0}, {"avg_bits": 5.0}, ties.names(layers))
    dyn = json.loads(export(pol, "gptqmodel").text)["quantization_config"]["dynamic"]
    cfg = json.loads(export(pol, "compressed-tensors").text)["quantization_config"]
    pats = [t[3:] for g in cfg["config_groups"].values() for t in g["targets"]]
    moe = [p for p in pats if re.match(p, "model.layers.1.mlp.experts.2.down_proj")]
    assert len(moe) == 1 and re.match(moe[0], "model.layers.1.mlp.experts") and not re.match(moe[0], "model.layers.0.mlp.experts")
    assert not re.match(moe[0], "model.layers.1.mlp.shared_expert.up_proj")
    assert dyn  # the 8-bit shared experts get overrides
    # experts of one block that differ are refused
    bad = choice.copy()
    bad[[i for i, l in enumerate(layers) if l.name == "model.layers.0.mlp.experts.1.down_proj"][0]] = 1
    pol_bad = build_policy("hf:/m", "0" * 64, layers, fmts, bad, {"avg_bits": 5.0}, {"avg_bits": 5.0}, ties.names(layers))
    with pytest.raises(ExportError, match="different formats"):
        export(pol_bad, "gptqmodel")
