"""compressed-tensors ``quantization_config`` (what vLLM and transformers read for
llm-compressor checkpoints) and the equivalent llm-compressor recipe: one ``config_groups``
entry per distinct (bits, group size, symmetric) with ``re:``-anchored targets, ``ignore`` for
float layers, ``format: mixed-precision`` when the groups differ."""
from __future__ import annotations

import json

from search.exports.base import ExportError, Exported, groups_of, register, tie_patterns
from search.policy import Policy

BITS = (2, 3, 4, 8)


def _groups(policy: Policy) -> dict:
    out = {}
    # act-order with static groups is compressed-tensors' actorder "weight" (columns reordered
    # while quantizing, contiguous groups stored)
    actorder = "weight" if policy.quantizer.method == "gptq" and policy.quantizer.act_order else None
    for i, ((bits, g, sym), names) in enumerate(groups_of(policy)):
        if bits not in BITS:
            raise ExportError(f"compressed-tensors: {bits}-bit ({names[0]} …) is not an int width it packs {BITS}")
        if g is not None and g < 1:
            raise ExportError(f"compressed-tensors: group size {g} is invalid")
        out[f"group_{i}"] = {
            "targets": ["re:" + p for p in tie_patterns(policy, names)],
            "weights": {"num_bits": bits, "type": "int", "symmetric": sym,
                        "strategy": "channel" if g is None else "group", "group_size": g, "dynamic": False,
                        "observer": "minmax", "actorder": actorder, "block_structure": None, "observer_kwargs": {}},
            "input_activations": None, "output_activations": None,
        }
    if not out:
        raise ExportError("compressed-tensors: the policy quantizes no layer")
    return out


@register("compressed-tensors")
def compressed_tensors(policy: Policy) -> Exported:
    groups = _groups(policy)
    fmt = "mixed-precision" if len(groups) > 1 else "pack-quantized"
    cfg = {"quant_method": "compressed-tensors", "format": fmt, "config_groups": groups,
           "ignore": sorted(policy.float_layers) + ["lm_head"], "quantization_status": "compressed",
           "kv_cache_scheme": None, "global_compression_ratio": None}
    return Exported(json.dumps({"quantization_config": cfg}, indent=2), "application/json", "config.quantization.json")


@register("llmcompressor-recipe")
def llmcompressor_recipe(policy: Policy) -> Exported:
    """A GPTQ policy becomes a GPTQModifier (with its dampening and block size), an RTN one a
    QuantizationModifier: the quantizer the measurements assumed is the one the recipe runs."""
    groups = _groups(policy)
    q = policy.quantizer
    if q.method == "gptq":
        lines = ["quant_stage:", "  quant_modifiers:", "    GPTQModifier:", f"      dampening_frac: {q.damp}",
                 "      block_size: 128", "      ignore:"]
    else:
        lines = ["quant_stage:", "  quant_modifiers:", "    QuantizationModifier:", "      ignore:"]
    lines += [f"        - {json.dumps(n)}" for n in sorted(policy.float_layers) + ["lm_head"]]
    lines.append("      config_groups:")
    for name, g in groups.items():
        w = g["weights"]
        lines += [f"        {name}:", "          targets:"] + [f"            - {json.dumps(t)}" for t in g["targets"]]
        lines += ["          weights:", f"            num_bits: {w['num_bits']}", "            type: int",
                  f"            symmetric: {str(w['symmetric']).lower()}", f"            strategy: {w['strategy']}"]
        if w["group_size"] is not None:
            lines.append(f"            group_size: {w['group_size']}")
        if w["actorder"] is not None:
            lines.append(f"            actorder: {w['actorder']}")
        lines.append("            dynamic: false")
    return Exported("\n".join(lines) + "\n", "application/yaml", "recipe.yaml")
