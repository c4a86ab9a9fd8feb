"""llama.cpp ``--tensor-type-file``: one ``<anchored regex>=<ggml type>`` line per tensor, on GGUF
tensor names (Llama-family HF → GGUF name map), for ``llama-quantize`` to apply. A policy planned
in ggml types (``--target llamacpp``) is written type for type — the fallback a row length forces
is llama-quantize's own choice too, and the file says where it happens. An integer-format policy
maps bits to the nearest ggml type at or above them (2→q2_K … 6→q6_K, 7/8→q8_0), which rounds and
costs differently from what was measured; the file says so. ``bitplan export --format gguf``
writes the quantized file itself."""
from __future__ import annotations

import re

from search.exports.base import ExportError, Exported, register
from search.runtime_formats import GGUF_TYPES
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


@register("llamacpp", "config: llama-quantize --tensor-type-file applies these ggml types", GGUF_TYPES + ("mxfp4",))
def llamacpp(policy: Policy) -> Exported:
    if all(l.runtime for l in policy.layers):
        lines = [f"# bitplan policy for {policy.model.ref}: the ggml types it was planned and measured in"]
    else:
        lines = [f"# bitplan policy for {policy.model.ref}: integer formats → ggml type {GGML}; llama.cpp rounds and "
                 "stores these differently from what bitplan measured (plan with --target llamacpp for exact types)"]
    fell_back = [l for l in policy.layers if l.stored_as]
    if fell_back:
        lines.append(f"# {len(fell_back)} tensor(s) have rows their type's block does not divide: llama-quantize stores "
                     f"them in its fallback type, as priced and measured (e.g. {fell_back[0].name}: {fell_back[0].stored_as})")
    for l in policy.layers:
        lines.append(f"^{re.escape(gguf_name(l.name))}$={l.runtime or GGML[l.bits]}")
    for name in policy.float_layers:
        lines.append(f"^{re.escape(gguf_name(name))}$=f16")
    return Exported("\n".join(lines) + "\n", "text/plain", "tensor-types.txt")
