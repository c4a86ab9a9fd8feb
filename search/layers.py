"""Framework-free description of a quantizable layer (DESIGN §2). Proxies fill it from torch;
solvers and costs only need these numbers."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class LayerInfo:
    """A quantizable weight. ``in_features`` is the reduction dim that groups run along
    (``in_channels/groups*kh*kw`` for convs); ``macs`` is per sample (convs) or per token."""

    name: str
    kind: str
    shape: tuple[int, ...]
    numel: int
    in_features: int
    macs: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LayerInfo":
        return cls(d["name"], d["kind"], tuple(d["shape"]), int(d["numel"]), int(d["in_features"]), int(d["macs"]))


# Sibling projections that runtimes fuse into one matmul (vLLM, TensorRT-LLM): they must
# share a format. Keyed by preset name; each entry is a set of leaf names fused together.
# runtimes that fuse projections and refuse fused layers whose schemes differ
# (``experts``: vLLM's FusedMoE runs every expert of one MoE layer — w1/w3 fused as w13, and
# w2 — with one quantization method, so all of them share a format)
RUNTIME_TIES: dict[str, list[str]] = {"vllm": ["qkv", "gate_up", "experts"], "sglang": ["qkv", "gate_up", "experts"],
                                      "none": []}


def runtime_ties(runtime: str | None, ties: list[str]) -> list[str]:
    """The tie presets a target runtime needs, merged with the ones asked for explicitly."""
    if runtime is None:
        return list(ties)
    if runtime not in RUNTIME_TIES:
        raise ValueError(f"unknown runtime {runtime!r}: choose from {', '.join(sorted(RUNTIME_TIES))}")
    return sorted(set(ties) | set(RUNTIME_TIES[runtime]))


# the fused module a runtime builds from a tied set of siblings (vLLM's names)
FUSED_NAME: dict[frozenset[str], str] = {frozenset({"q_proj", "k_proj", "v_proj"}): "qkv_proj",
                                         frozenset({"gate_proj", "up_proj"}): "gate_up_proj"}

TIE_PRESETS: dict[str, list[tuple[str, ...]]] = {
    "qkv": [("q_proj", "k_proj", "v_proj"), ("query", "key", "value")],
    "gate_up": [("gate_proj", "up_proj"), ("w1", "w3")],
    "experts": [],  # by name pattern, see EXPERT
}
# an MoE expert's linear layer: <moe>.experts.<index>.<leaf> (Mixtral block_sparse_moe.experts.E.w1,
# Qwen-MoE / DeepSeek mlp.experts.E.gate_proj); shared experts are plain MLPs and do not match
EXPERT = re.compile(r"^(.*\.experts)\.\d+\.[^.]+$")


@dataclass
class TieGroups:
    """Groups of layer indices that must take the same format."""

    groups: list[list[int]] = field(default_factory=list)

    def names(self, layers: list[LayerInfo]) -> list[list[str]]:
        return [[layers[i].name for i in g] for g in self.groups]


def find_tie_groups(layers: list[LayerInfo], presets: list[str]) -> TieGroups:
    """Tie groups among ``layers`` for the named presets: ``qkv``/``gate_up`` tie siblings under
    one parent whose leaf names form a fused set; ``experts`` ties every expert layer of one MoE
    block."""
    unknown = [p for p in presets if p not in TIE_PRESETS]
    if unknown:
        raise ValueError(f"unknown tie preset {unknown[0]!r}: choose from {sorted(TIE_PRESETS)}")
    by_parent: dict[str, dict[str, int]] = {}
    for i, layer in enumerate(layers):
        parent, _, leaf = layer.name.rpartition(".")
        by_parent.setdefault(parent, {})[leaf] = i
    groups = []
    for preset in presets:
        for leaves in TIE_PRESETS[preset]:
            for children in by_parent.values():
                members = [children[leaf] for leaf in leaves if leaf in children]
                if len(members) > 1:
                    groups.append(sorted(members))
    if "experts" in presets:
        moe: dict[str, list[int]] = {}
        for i, layer in enumerate(layers):
            m = EXPERT.match(layer.name)
            if m:
                moe.setdefault(m.group(1), []).append(i)
        groups += [g for g in moe.values() if len(g) > 1]
    return TieGroups(_merge(groups))


def _merge(groups: list[list[int]]) -> list[list[int]]:
    """Overlapping groups become one (an expert's gate/up pair is also part of its MoE layer's
    group); solvers need disjoint groups."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for g in groups:
        for i in g[1:]:
            parent[find(i)] = find(g[0])
    out: dict[int, list[int]] = {}
    for g in groups:
        for i in g:
            out.setdefault(find(i), []).append(i)
    return sorted(sorted(set(v)) for v in out.values())


def tie_groups_from_names(layers: list[LayerInfo], groups: list[list[str]]) -> TieGroups:
    """Tie groups given by layer names (as stored in a policy); unknown names are an error."""
    index = {l.name: i for i, l in enumerate(layers)}
    out = []
    for g in groups:
        missing = [n for n in g if n not in index]
        if missing:
            raise ValueError(f"tie group names unknown layer {missing[0]!r}")
        out.append(sorted(index[n] for n in g))
    return TieGroups(out)


def match_layers(layers: list[LayerInfo], pattern: str) -> list[int]:
    """Indices of layers whose name matches the regex ``pattern`` (search, not full match)."""
    rx = re.compile(pattern)
    return [i for i, l in enumerate(layers) if rx.search(l.name)]
