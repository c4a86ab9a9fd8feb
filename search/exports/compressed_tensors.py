"""compressed-tensors ``quantization_config`` (what vLLM and transformers read for
llm-compressor checkpoints) and the equivalent llm-compressor recipe: one ``config_groups``
entry per distinct (bits, group size, symmetric) with ``re:``-anchored targets, ``ignore`` for
float layers, ``format: mixed-precision`` when the groups differ."""
from __future__ import annotations

import json

from search.exports.base import ExportError, Exported, groups_of, register, tie_patterns
from search.policy import Policy

BITS = (2, 3, 4, 8)


# bitplan's float formats as compressed-tensors' QuantizationArgs and the format that stores them
FLOAT_ARGS = {
    "fp8": ({"num_bits": 8, "type": "float", "symmetric": True, "strategy": "tensor"}, "float-quantized"),
    "fp8_pc": ({"num_bits": 8, "type": "float", "symmetric": True, "strategy": "channel"}, "float-quantized"),
    "nvfp4": ({"num_bits": 4, "type": "float", "symmetric": True, "strategy": "tensor_group", "group_size": 16},
              "nvfp4-pack-quantized"),
}


def weight_args(bits: int, group_size: int | None, symmetric: bool, runtime: str | None, actorder=None) -> tuple[dict, str]:
    """One layer format → (the ``weights`` QuantizationArgs, the compressed-tensors format)."""
    if runtime:
        args, fmt = FLOAT_ARGS[runtime]
        return {"group_size": None, "dynamic": False, "observer": "minmax", "actorder": None,
                "block_structure": None, "observer_kwargs": {}, **args}, fmt
    return {"num_bits": bits, "type": "int", "symmetric": symmetric, "strategy": "channel" if group_size is None else "group",
            "group_size": group_size, "dynamic": False, "observer": "minmax", "actorder": actorder,
            "block_structure": None, "observer_kwargs": {}}, "pack-quantized"


def config_groups(policy: Policy) -> dict:
    """``config_groups`` of the policy's quantization_config: one group per distinct format, with
    the compressed-tensors format that stores it (``format`` per group in a mixed checkpoint)."""
    out = {}
    # act-order with static groups is compressed-tensors' actorder "weight" (columns reordered
    # while quantizing, contiguous groups stored)
    actorder = "weight" if policy.quantizer.method == "gptq" and policy.quantizer.act_order else None
    for i, ((bits, g, sym, runtime), names) in enumerate(groups_of(policy, runtime=True)):
        if runtime:
            args, fmt = weight_args(bits, g, sym, runtime)
            out[f"group_{i}"] = {"targets": ["re:" + p for p in tie_patterns(policy, names)], "weights": args,
                                 "input_activations": None, "output_activations": None, "format": fmt}
            continue
        if bits not in BITS:
            raise ExportError(f"compressed-tensors: {bits}-bit ({names[0]} …) is not an int width it packs {BITS}")
        if g is not None and g < 1:
            raise ExportError(f"compressed-tensors: group size {g} is invalid")
        out[f"group_{i}"] = {
            "targets": ["re:" + p for p in tie_patterns(policy, names)],
            "weights": weight_args(bits, g, sym, None, actorder)[0],
            "input_activations": None, "output_activations": None, "format": "pack-quantized",
        }
    if not out:
        raise ExportError("compressed-tensors: the policy quantizes no layer")
    return out


@register("compressed-tensors", "config: the quantization_config of a compressed-tensors checkpoint (with --model, "
          "bitplan export writes the quantized checkpoint itself)", tuple(FLOAT_ARGS))
def compressed_tensors(policy: Policy) -> Exported:
    return Exported(json.dumps({"quantization_config": quantization_config(policy)}, indent=2), "application/json",
                    "config.quantization.json")


def quantization_config(policy: Policy) -> dict:
    """The ``quantization_config`` of config.json for this policy (the artifact writer stores the
    same one beside the packed weights)."""
    groups = config_groups(policy)
    fmt = "mixed-precision" if len(groups) > 1 else next(iter(groups.values()))["format"]
    cfg = {"quant_method": "compressed-tensors", "format": fmt, "config_groups": groups,
           "ignore": sorted(policy.float_layers) + ["lm_head"], "quantization_status": "compressed",
           "kv_cache_scheme": None, "global_compression_ratio": None}
    return cfg


@register("llmcompressor-recipe", "config: an llm-compressor recipe that quantizes the model with these schemes")
def llmcompressor_recipe(policy: Policy) -> Exported:
    """A GPTQ policy becomes a GPTQModifier (with its dampening and block size), an RTN one a
    QuantizationModifier: the quantizer the measurements assumed is the one the recipe runs."""
    if any(l.runtime for l in policy.layers):
        raise ExportError("llmcompressor-recipe: the recipe writes integer schemes; export fp8/nvfp4 policies with "
                          "--format compressed-tensors")
    groups = config_groups(policy)
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
