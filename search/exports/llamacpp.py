"""llama.cpp ``--tensor-type-file``: one ``<anchored regex>=<ggml type>`` line per tensor, on GGUF
tensor names (Llama-family HF → GGUF name map). bits → nearest ggml type at or above the
policy's bits (the k-quants carry their own super-block scales, so group size and symmetry are
not expressible and are stated as such): 2→q2_K, 3→q3_K, 4→q4_K, 5→q5_K, 6→q6_K, 7/8→q8_0,
float→f16."""
from __future__ import annotations

import re

from search.exports.base import ExportError, Exported, register
from search.policy import Policy

GGML = {2: "q2_K", 3: "q3_K", 4: "q4_K", 5: "q5_K", 6: "q6_K", 7: "q8_0", 8: "q8_0", 16: "f16"}
HF_TO_GGUF = [
    (r"^model\.layers\.(\d+)\.self_attn\.q_proj$", r"blk.\1.attn_q"),
    (r"^model\.layers\.(\d+)\.self_attn\.k_proj$", r"blk.\1.attn_k"),
    (r"^model\.layers\.(\d+)\.self_attn\.v_proj$", r"blk.\1.attn_v"),
    (r"^model\.layers\.(\d+)\.self_attn\.o_proj$", r"blk.\1.attn_output"),
    (r"^model\.layers\.(\d+)\.mlp\.gate_proj$", r"blk.\1.ffn_gate"),
    (r"^model\.layers\.(\d+)\.mlp\.up_proj$", r"blk.\1.ffn_up"),
    (r"^model\.layers\.(\d+)\.mlp\.down_proj$", r"blk.\1.ffn_down"),
    (r"^model\.embed_tokens$", "token_embd"),
    (r"^lm_head$", "output"),
]


def gguf_name(hf: str) -> str:
    for pat, rep in HF_TO_GGUF:
        if re.match(pat, hf):
            return re.sub(pat, rep, hf) + ".weight"
    raise ExportError(f"llamacpp: no GGUF name for {hf!r}: the map covers Llama-family models "
                      "(model.layers.N.self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj, embed_tokens, lm_head)")


@register("llamacpp")
def llamacpp(policy: Policy) -> Exported:
    lines = [f"# bitplan policy for {policy.model.ref}: bits → ggml type {GGML}; group sizes and symmetry are "
             "not expressible (k-quants use their own super-blocks)"]
    for l in policy.layers:
        lines.append(f"^{re.escape(gguf_name(l.name))}$={GGML[l.bits]}")
    for name in policy.float_layers:
        lines.append(f"^{re.escape(gguf_name(name))}$=f16")
    return Exported("\n".join(lines) + "\n", "text/plain", "tensor-types.txt")
