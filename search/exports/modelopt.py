"""NVIDIA ModelOpt ``quant_cfg``: fnmatch wildcards on ``*.weight_quantizer`` names →
``{num_bits, block_sizes, enable}``; input quantizers off (weight-only), float layers disabled.
ModelOpt's integer weight quantizers are symmetric INT4/INT8 (what TensorRT-LLM deploys), so other
widths and asymmetric formats are refused. NVFP4 (E2M1 with E4M3 scales per 16), FP8 (E4M3 per
tensor) and MXFP8 (E4M3 with E8M0 scales per 32) are written as ModelOpt's own configs write them:
``num_bits`` as (exponent, mantissa) bits, dynamic block scales with their ``scale_bits``."""
from __future__ import annotations

import json

from search.exports.base import ExportError, Exported, register
from search.policy import Policy


FLOAT_CFG = {
    "nvfp4": {"num_bits": [2, 1], "block_sizes": {"-1": 16, "type": "dynamic", "scale_bits": [4, 3]}, "axis": None},
    "fp8": {"num_bits": [4, 3], "axis": None},
    "mxfp8": {"num_bits": [4, 3], "block_sizes": {"-1": 32, "type": "dynamic", "scale_bits": [8, 0]}},
}


@register("modelopt", "config: ModelOpt's mtq.quantize applies this quant_cfg, then exports for TensorRT-LLM",
          tuple(FLOAT_CFG))
def modelopt(policy: Policy) -> Exported:
    cfg: dict = {"*weight_quantizer": {"enable": False}, "*input_quantizer": {"enable": False},
                 "*output_quantizer": {"enable": False}, "default": {"enable": False}}
    for l in policy.layers:
        if l.runtime:
            cfg[f"*{l.name}.weight_quantizer"] = {**FLOAT_CFG[l.runtime], "enable": True}
            continue
        if l.bits not in (4, 8):
            raise ExportError(f"modelopt: {l.bits}-bit ({l.name}) is not deployable; ModelOpt integer weights are 4 or 8 bits")
        if not l.symmetric:
            raise ExportError(f"modelopt: {l.name} is asymmetric; ModelOpt integer weight quantizers are symmetric — "
                              "re-solve with --symmetric")
        q = {"num_bits": l.bits, "axis": 0, "enable": True} if l.group_size is None else \
            {"num_bits": l.bits, "block_sizes": {"-1": l.group_size}, "enable": True}
        cfg[f"*{l.name}.weight_quantizer"] = q
    return Exported(json.dumps({"quant_cfg": cfg, "algorithm": "max"}, indent=2), "application/json", "modelopt_quant_cfg.json")
