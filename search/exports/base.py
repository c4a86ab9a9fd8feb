"""Registry and shared helpers of the exporters."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from search.layers import EXPERT, FUSED_NAME
from search.policy import Policy
from search.runtime_formats import GGUF_TYPES


class ExportError(ValueError):
    """The target cannot express this policy; the message says what to change."""


@dataclass(frozen=True)
class Exported:
    text: str
    media_type: str
    filename: str


Exporter = Callable[[Policy], Exported]
EXPORTERS: dict[str, Exporter] = {}
# what each exporter hands over (every one here is a config the runtime's own tool applies; the
# quantized files themselves come from workers/artifacts) and the runtime formats it can express
DESCRIBES: dict[str, str] = {}
RUNTIMES: dict[str, frozenset[str]] = {}


def register(name: str, describes: str, runtimes: tuple[str, ...] = ()) -> Callable[[Exporter], Exporter]:
    def deco(fn: Exporter) -> Exporter:
        EXPORTERS[name] = fn
        DESCRIBES[name] = describes
        RUNTIMES[name] = frozenset(runtimes)
        return fn
    return deco


def get_exporter(name: str) -> Exporter:
    try:
        return EXPORTERS[name]
    except KeyError:
        raise ExportError(f"unknown export format {name!r}: use one of {', '.join(sorted(EXPORTERS))}") from None


def export(policy: Policy, fmt: str) -> Exported:
    check_ties(policy)
    if policy.sparsity:
        raise ExportError(f"{fmt}: the policy prunes {len(policy.sparsity)} layer(s) (joint search); quantizer configs "
                          "cannot express pruning — prune the model first, then export a quantization-only policy")
    exporter = get_exporter(fmt)
    for l in policy.layers:
        if l.runtime and l.runtime not in RUNTIMES[fmt]:
            able = sorted(n for n, r in RUNTIMES.items() if l.runtime in r)
            if l.runtime in GGUF_TYPES:
                able.append("gguf (the file itself, with --model)")
            raise ExportError(f"{fmt}: {l.name} is in {l.runtime}, which {fmt} cannot express"
                              + (f"; export it with --format {' or '.join(able)}" if able else ""))
    return exporter(policy)


def anchored(name: str) -> str:
    """An anchored regex that matches exactly this module name."""
    return "^" + re.escape(name) + "$"


def anchored_any(names: list[str]) -> str:
    """One anchored regex for several sibling modules and their fused name, so runtimes that
    fuse q/k/v (qkv_proj) or gate/up (gate_up_proj) re-match it against the fused module."""
    if len(names) == 1:
        return anchored(names[0])
    moe = {m.group(1) if (m := EXPERT.match(n)) else None for n in names}
    if len(moe) == 1 and None not in moe:
        # every expert of one MoE block: each expert layer, and the fused module vLLM's FusedMoE
        # registers under the block's ``experts`` prefix
        leaves = sorted({n.rsplit(".", 1)[1] for n in names})
        return "^" + re.escape(moe.pop()) + r"(?:\.\d+\.(?:" + "|".join(re.escape(x) for x in leaves) + "))?$"
    parents = {n.rsplit(".", 1)[0] for n in names}
    leaves = [n.rsplit(".", 1)[1] for n in names]
    if len(parents) != 1:
        return "^(?:" + "|".join(re.escape(n) for n in names) + ")$"
    extra = [FUSED_NAME[frozenset(leaves)]] if frozenset(leaves) in FUSED_NAME else []
    return "^" + re.escape(parents.pop()) + r"\.(?:" + "|".join(re.escape(x) for x in leaves + extra) + ")$"


def check_ties(policy: Policy) -> None:
    """Fused layers must share one format (vLLM refuses fused projections whose schemes differ)."""
    fmt = {l.name: (l.bits, l.group_size, l.symmetric, l.runtime) for l in policy.layers}
    for group in policy.ties:
        seen = {fmt.get(n, "float") for n in group}
        if len(seen) > 1:
            raise ExportError(f"tied layers {group} have different formats {sorted(map(str, seen))}; re-solve with the "
                              "tie (bitplan search --tie …) so fused projections share one format")


def groups_of(policy: Policy, runtime: bool = False) -> list[tuple[tuple, list[str]]]:
    """Layers grouped by (bits, group_size, symmetric) — with the runtime format's name appended
    when ``runtime`` — most weights first, model order kept."""
    out: dict[tuple, list[str]] = {}
    weight: dict[tuple, int] = {}
    for l in policy.layers:
        key = (l.bits, l.group_size, l.symmetric) + ((l.runtime,) if runtime else ())
        out.setdefault(key, []).append(l.name)
        weight[key] = weight.get(key, 0) + l.numel
    return sorted(out.items(), key=lambda kv: -weight[kv[0]])


def tie_patterns(policy: Policy, names: list[str]) -> list[str]:
    """Anchored patterns for ``names``, one per tie group (matching the fused name too)."""
    tied = {n: g for g in policy.ties for n in g}
    done, out = set(), []
    for n in names:
        if n in done:
            continue
        group = [m for m in tied.get(n, [n]) if m in names] or [n]
        done.update(group)
        out.append(anchored_any(group))
    return out
