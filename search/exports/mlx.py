"""MLX (``mlx_lm``) per-layer quantization config: the ``quantization`` entry of config.json that
``mlx_lm.convert`` writes and ``mlx_lm.load`` reads — the most common (bits, group_size) as the
default and one entry per module that differs, ``false`` for modules kept in float. MLX quantizes
affinely with an fp16 scale and an fp16 bias per group (32 bits per group, where bitplan's
asymmetric grid stores an fp16 scale and a ``bits``-wide zero point), so MLX files are slightly
larger than the policy's cost and round a little differently (a symmetric format becomes
MLX's affine one); per-channel formats are refused (MLX groups every row)."""
from __future__ import annotations

import json

from search.exports.base import ExportError, Exported, groups_of, register
from search.policy import Policy

BITS = (2, 3, 4, 5, 6, 8)
GROUPS = (32, 64, 128)


@register("mlx", "config: mlx_lm quantizes the model itself with these per-module bits and group sizes")
def mlx(policy: Policy) -> Exported:
    groups = groups_of(policy)
    if not groups:
        raise ExportError("mlx: the policy quantizes no layer")
    for (bits, g, _sym), names in groups:
        if bits not in BITS or g not in GROUPS:
            raise ExportError(f"mlx: {names[0]} is {bits}-bit in groups of {g}; MLX takes bits {BITS} and group sizes "
                              f"{GROUPS} (re-solve with --target mlx)")
    (bits, g, _), _ = groups[0]
    q: dict = {"group_size": g, "bits": bits}
    for (b, gs, _), names in groups[1:]:
        q.update({n: {"group_size": gs, "bits": b} for n in names})
    q.update({n: False for n in policy.float_layers})
    return Exported(json.dumps({"quantization": q}, indent=2), "application/json", "mlx_quantization.json")
