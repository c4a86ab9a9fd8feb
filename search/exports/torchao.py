"""torchao ``FqnToConfig``: exact fully-qualified module names → serialised
``IntxWeightOnlyConfig`` (``{_type, _version, _data}``: int<bits> weights, ``PerGroup`` or
per-channel ``PerAxis(0)`` granularity, SYMMETRIC/ASYMMETRIC mapping), ``null`` for layers kept
in float, under the ``default`` key of ``quant_type`` as transformers' ``TorchAoConfig`` reads
it. Serialised by hand in torchao's own ``config_to_dict`` form, so no torch is needed here."""
from __future__ import annotations

import json

from search.exports.base import ExportError, Exported, register
from search.policy import Policy


def _layer(bits: int, group_size: int | None, symmetric: bool) -> dict:
    if not 1 <= bits <= 8:
        raise ExportError(f"torchao: int{bits} weights are not supported (IntxWeightOnlyConfig takes 1..8 bits)")
    gran = ({"_type": "PerAxis", "_version": 1, "_data": {"axis": 0}} if group_size is None else
            {"_type": "PerGroup", "_version": 1, "_data": {"group_size": group_size}})
    return {"_type": "IntxWeightOnlyConfig", "_version": 2, "_data": {
        "weight_dtype": {"_type": "torch.dtype", "_data": f"int{bits}"},
        "granularity": gran,
        "mapping_type": {"_type": "MappingType", "_data": "SYMMETRIC" if symmetric else "ASYMMETRIC"},
        "scale_dtype": None,
        "intx_packing_format": {"_type": "IntxPackingFormat", "_data": "UNPACKED_TO_INT8"},
        "intx_choose_qparams_algorithm": {"_type": "IntxChooseQParamsAlgorithm", "_data": "AFFINE"}}}


def _float8() -> dict:
    """fp8_pc: torchao's float8 weight-only config (E4M3, one scale per row)."""
    return {"_type": "Float8WeightOnlyConfig", "_version": 2, "_data": {
        "weight_dtype": {"_type": "torch.dtype", "_data": "float8_e4m3fn"}}}


def fqn_to_config(policy: Policy) -> dict:
    table: dict[str, dict | None] = {l.name: _float8() if l.runtime == "fp8_pc" else
                                     _layer(l.bits, l.group_size, l.symmetric) for l in policy.layers}
    table.update({n: None for n in policy.float_layers})
    if not policy.layers:
        raise ExportError("torchao: the policy quantizes no layer")
    return {"_type": "FqnToConfig", "_version": 1, "_data": {"fqn_to_config": table}}


@register("torchao", "config: transformers' TorchAoConfig quantizes the model itself on load", ("fp8_pc",))
def torchao(policy: Policy) -> Exported:
    doc = {"quant_method": "torchao", "quant_type": {"default": fqn_to_config(policy)}}
    return Exported(json.dumps(doc, indent=2), "application/json", "torchao_config.json")
