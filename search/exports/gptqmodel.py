"""GPTQModel ``quantization_config`` with ``dynamic`` per-module overrides: ``+:<regex>`` →
``{bits, group_size, sym}``, ``-:<regex>`` → skip (kept in float). The base config is the format
that covers most weights; every other quantized module gets an anchored override. A policy found
under GPTQ carries its damping and act-order (as desc_act + static_groups)."""
from __future__ import annotations

import json

from search.exports.base import ExportError, Exported, anchored, groups_of, register, tie_patterns
from search.policy import Policy

BITS = (2, 3, 4, 8)


@register("gptqmodel", "config: GPTQModel quantizes the model itself with these per-module overrides")
def gptqmodel(policy: Policy) -> Exported:
    groups = groups_of(policy)
    if not groups:
        raise ExportError("gptqmodel: the policy quantizes no layer")
    for (bits, g, _sym), names in groups:
        if bits not in BITS:
            raise ExportError(f"gptqmodel: {bits}-bit ({names[0]} …) is not supported; GPTQModel packs {BITS}")
        if g is not None and (g < 16 or g & (g - 1)):
            raise ExportError(f"gptqmodel: group size {g} ({names[0]} …) must be a power of two >= 16 or per-channel")
    (bits, g, sym), _ = groups[0]
    dynamic: dict[str, dict] = {}
    for (b, gs, s), names in groups[1:]:
        for pat in tie_patterns(policy, names):
            dynamic["+:" + pat] = {"bits": b, "group_size": -1 if gs is None else gs, "sym": s}
    for name in policy.float_layers:
        dynamic["-:" + anchored(name)] = {}
    cfg = {"quant_method": "gptq", "checkpoint_format": "gptq", "bits": bits, "group_size": -1 if g is None else g,
           "sym": sym, "desc_act": False, "dynamic": dynamic}
    q = policy.quantizer
    if q.method == "gptq":
        # bitplan's act-order keeps scales on the original contiguous groups: GPTQModel's
        # desc_act with static_groups, so the packed layout is the one the cost model priced
        cfg.update(desc_act=bool(q.act_order), static_groups=bool(q.act_order), damp_percent=q.damp)
    return Exported(json.dumps({"quantization_config": cfg}, indent=2), "application/json", "quantize_config.json")
