"""Round trips through the targets' own parsers where they install here without CUDA wheels:
compressed-tensors (its pydantic QuantizationConfig), torchao (config_from_dict) and transformers'
quantization configs (GPTQConfig, CompressedTensorsConfig, TorchAoConfig). GPTQModel's dynamic map,
llama.cpp and ModelOpt are checked against their documented schema by the golden files."""
from __future__ import annotations

import json

import pytest

from search.exports import export
from tests.search.test_exports import llama_policy


def test_compressed_tensors_parses_our_config():
    ct = pytest.importorskip("compressed_tensors.quantization")
    d = json.loads(export(llama_policy(symmetric=True), "compressed-tensors").text)["quantization_config"]
    q = ct.QuantizationConfig.model_validate(d)
    assert q.format == "mixed-precision" and len(q.config_groups) == 2
    w = q.config_groups["group_1"].weights
    assert (w.num_bits, w.group_size, w.symmetric, getattr(w.strategy, "value", w.strategy)) == (8, 128, True, "group")
    assert "model.layers.1.mlp.down_proj" in q.ignore


def test_torchao_loads_our_fqn_to_config():
    torch = pytest.importorskip("torch")
    core = pytest.importorskip("torchao.core.config")
    from torchao.quantization import FqnToConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup
    from torchao.quantization.quant_primitives import MappingType
    doc = json.loads(export(llama_policy(), "torchao").text)
    cfg = core.config_from_dict(doc["quant_type"]["default"])
    assert isinstance(cfg, FqnToConfig)
    q = cfg.fqn_to_config["model.layers.0.self_attn.q_proj"]
    assert q == IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerGroup(128), mapping_type=MappingType.ASYMMETRIC)
    assert cfg.fqn_to_config["model.layers.1.mlp.down_proj"] is None
    assert cfg.fqn_to_config["model.layers.1.mlp.up_proj"].weight_dtype == torch.int4


def test_compressed_tensors_parses_a_gptq_policy_with_act_order():
    ct = pytest.importorskip("compressed_tensors.quantization")
    from tests.search.test_exports import gptq_policy
    d = json.loads(export(gptq_policy(), "compressed-tensors").text)["quantization_config"]
    q = ct.QuantizationConfig.model_validate(d)
    assert {getattr(g.weights.actorder, "value", g.weights.actorder) for g in q.config_groups.values()} == {"weight"}


def test_transformers_quantization_configs_load_our_exports():
    """transformers' own config classes (what from_pretrained reads from config.json) accept each
    export: GPTQConfig validates bits, group size and damping (it keeps no ``dynamic`` — GPTQModel
    reads that from quantize_config.json), CompressedTensorsConfig builds the compressed-tensors
    config, TorchAoConfig the FqnToConfig."""
    qc = pytest.importorskip("transformers.utils.quantization_config")
    from tests.search.test_exports import gptq_policy, llama_policy
    g = qc.GPTQConfig.from_dict(json.loads(export(gptq_policy(), "gptqmodel").text)["quantization_config"])
    assert (g.bits, g.group_size, g.desc_act, g.sym, g.damp_percent, g.format) == (4, 64, True, True, 0.02, "gptq")
    c = qc.CompressedTensorsConfig.from_dict(json.loads(export(gptq_policy(), "compressed-tensors").text)["quantization_config"])
    assert c.quantization_config.format == "mixed-precision" and len(c.quantization_config.config_groups) == 2
    t = qc.TorchAoConfig.from_dict(json.loads(export(llama_policy(), "torchao").text))
    assert type(t.quant_type).__name__ == "FqnToConfig"
    assert t.quant_type.fqn_to_config["model.layers.1.mlp.down_proj"] is None
