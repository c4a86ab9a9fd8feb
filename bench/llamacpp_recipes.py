"""Which GGML type llama.cpp's ``llama-quantize`` gives each tensor of a Llama-family model.

A re-statement, in our own Python, of the per-tensor type choice in llama.cpp's
``src/llama-quant.cpp`` (``llama_tensor_get_type`` -> ``llama_tensor_get_type_impl`` ->
``tensor_type_fallback``), so that the mixtures behind ``Q4_K_M``, ``Q3_K_M`` ... can be used as
baselines (their per-layer bit-widths and their average bits per weight) without running
llama.cpp. No llama.cpp code is copied; the rules were read and written out again.

Source read
-----------
* ``ggml-org/llama.cpp`` ``src/llama-quant.cpp`` at commit
  ``007dbbf3fd17eefe9b47fee45f48f7ba5e62b714`` (the newest stored revision; after the
  ``tensor_category`` refactor of PR #19770). This is ``revision="current"``, the default.
* The same file at the older commit ``8784689fee07c6daabf3487d24e1535534ef6e6b`` (one
  ``llama_tensor_get_type`` with the fallback inline, ``convert_incompatible_tensor``). This is
  ``revision="legacy"``; it is what most published GGUF files of 2024-2025 were made with.
* Tensor order: ``llama_model_loader::weight_name_comparer`` (src/llama-model-loader.h) -- tensors
  are visited sorted by block number (non-block tensors first), then by name; the running
  counters below depend on that order.
* Model type ``70B``: ``llama_model_llama`` hparams (src/models/llama.cpp / llama-model.cpp) --
  80 layers and ``n_head != n_head_kv`` (and not the ``n_expert == 8`` branch).

The two revisions differ in exactly two ways that matter here:

1. fallback of ``q2_K`` / ``q3_K`` when the row length is not a multiple of 256:
   ``q4_0`` (current) vs ``iq4_nl`` (legacy);
2. ``attn_qkv``: in the current source its category counts as "attn_v-like", so it takes the
   attn_v rules and its own ``attn_qkv`` branch is unreachable; in the legacy source it only takes
   the ``attn_qkv`` branch. (Llama-family checkpoints have no fused qkv, so this rarely matters.)

Rules implemented (ftypes Q2_K, Q3_K_S/M/L, Q4_K_S/M, Q5_K_S/M, Q6_K, Q8_0, Q4_0, and the trivial
Q4_1, Q5_0, Q5_1; no importance matrix, no ``--pure``, no ``--tensor-type`` /
``--output-tensor-type`` / ``--token-embedding-type`` overrides, ``quantize_output_tensor`` on)
------------------------------------------------------------------------------------------------
* Default type per ftype: Q2_K->q2_K, Q3_K_*->q3_K, Q4_K_*->q4_K, Q5_K_*->q5_K, Q6_K->q6_K,
  Q8_0->q8_0, Q4_0->q4_0 (Q4_1->q4_1, Q5_0->q5_0, Q5_1->q5_1).
* Not quantized (kept f32): norms (``*_norm.weight``), the MoE router ``ffn_gate_inp``, any
  tensor with fewer than 2 dims (rows or cols of 0 given).
* ``output`` -- and ``token_embd`` when the embeddings are tied (llama.cpp: no ``output.weight``
  in the file): q8_0 if ``cols`` is not a multiple of the *default* type's block, else q6_K
  unless the default type is q8_0 (then q8_0).
* ``token_embd`` (untied): the default type (the special cases are for IQ/TQ ftypes only).
* attn_v-like (``attn_v``; ``attn_qkv`` too in the current revision), in this order:
  Q2_K -> q4_K if n_gqa >= 4 else q3_K; Q3_K_M -> q5_K for the first two attn_v tensors
  (``i_attention_wv < 2``) else q4_K; Q3_K_L -> q5_K; Q4_K_M / Q5_K_M -> q6_K where
  ``use_more_bits(i_attention_wv, n_attention_wv)``; Q4_K_S -> q5_K for ``i_attention_wv < 4``.
  Then, for a 70B-type model, q3_K/q4_K -> q5_K; then, with n_expert == 8, q8_0.
  ``i_attention_wv`` counts attn_v-like tensors already visited; ``n_attention_wv`` is their
  total in the file.
* ``attn_k``: q8_0 when n_expert == 8 (other cases are IQ ftypes).
* ``attn_q``: nothing for these ftypes.
* ``ffn_down`` with i = ``i_ffn_down`` (running counter; with n_expert > 1 the block number parsed
  from the name) and n = n_layer: Q2_K -> q3_K; Q3_K_M -> q5_K if i < n/16 else q4_K (the q3_K
  arm is Falcon-only); Q3_K_L -> q5_K; Q4_K_M -> q6_K where ``use_more_bits(i, n)``;
  Q5_K_M -> q6_K where ``use_more_bits(i, n)``; Q4_K_S -> q5_K if i < n/8.
* ``attn_output`` (non-Falcon): with n_expert == 8, Q2_K / Q3_K_S / Q3_K_M / Q4_K_S / Q4_K_M ->
  q5_K; otherwise Q2_K -> q3_K, Q3_K_M -> q4_K, Q3_K_L -> q5_K.
* ``attn_qkv`` branch (legacy revision only): Q3_K_M / Q3_K_L -> q4_K, Q4_K_M -> q5_K,
  Q5_K_M -> q6_K.
* ``ffn_gate`` / ``ffn_up``: nothing for these ftypes (their rules are IQ3_XS-only).
* ``use_more_bits(i, n) = i < n//8 or i >= 7*n//8 or (i - n//8) % 3 == 2`` (C integer division;
  the ``%`` of a negative number never matters because those i are caught by ``i < n//8``).
* n_gqa = n_head // n_head_kv, taken from the attn_q / attn_k row counts unless given.
* Then the fallback for rows whose length (``cols`` = ggml ``ne[0]``) is not a multiple of the
  chosen type's block (256 for k-quants, 32 for q4_0/q4_1/q5_0/q5_1/q8_0/iq4_nl):
  q2_K, q3_K -> q4_0 (current) / iq4_nl (legacy); q4_K -> q5_0; q5_K -> q5_1; q6_K -> q8_0;
  and f16 if the fallback's 32-block does not divide the row either. Any other type that does
  not fit raises ``ValueError`` (llama.cpp throws "no tensor type fallback is defined").

Left out
--------
* imatrix-only rules (Q4_0/Q5_0 ffn_down -> q4_1/q5_1 in the first n/8 layers with an imatrix;
  IQ3_XXS/IQ4 choices that depend on ``has_imatrix``) -- we model runs without an imatrix.
* All IQ*, TQ*, Q1_0, Q2_0, Q2_K_S, MXFP4_MOE, NVFP4, F16/BF16/F32 ftypes and their branches.
* Architectures other than llama (Falcon's arms, BailingMoE3, Gemma's per_layer_token_embd, ...);
  model types other than 70B (the only type the rules test).
* User overrides (--pure, --tensor-type, --output-tensor-type, --token-embedding-type,
  --leave-output-tensor) and layer pruning.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

SOURCE_FILE = "ggml-org/llama.cpp:src/llama-quant.cpp"
SOURCE_COMMIT = "007dbbf3fd17eefe9b47fee45f48f7ba5e62b714"
LEGACY_COMMIT = "8784689fee07c6daabf3487d24e1535534ef6e6b"

# elements per quantization block (ggml_blck_size)
BLOCK_SIZE = {
    "q2_K": 256, "q3_K": 256, "q4_K": 256, "q5_K": 256, "q6_K": 256,
    "q4_0": 32, "q4_1": 32, "q5_0": 32, "q5_1": 32, "q8_0": 32, "iq4_nl": 32,
    "f16": 1, "f32": 1,
}

# storage bits per weight, block scales included
BITS_PER_WEIGHT = {
    "q2_K": 2.625, "q3_K": 3.4375, "q4_K": 4.5, "q5_K": 5.5, "q6_K": 6.5625,
    "q8_0": 8.5, "q4_0": 4.5, "q4_1": 5.0, "q5_0": 5.5, "q5_1": 6.0, "iq4_nl": 4.5,
    "f16": 16.0, "f32": 32.0,
}

DEFAULT_TYPE = {
    "Q2_K": "q2_K",
    "Q3_K_S": "q3_K", "Q3_K_M": "q3_K", "Q3_K_L": "q3_K",
    "Q4_K_S": "q4_K", "Q4_K_M": "q4_K",
    "Q5_K_S": "q5_K", "Q5_K_M": "q5_K",
    "Q6_K": "q6_K", "Q8_0": "q8_0",
    "Q4_0": "q4_0", "Q4_1": "q4_1", "Q5_0": "q5_0", "Q5_1": "q5_1",
}
FTYPES = tuple(DEFAULT_TYPE)

_FALLBACK_COMMON = {"q4_K": "q5_0", "q5_K": "q5_1", "q6_K": "q8_0"}
FALLBACK = {
    "current": {"q2_K": "q4_0", "q3_K": "q4_0", **_FALLBACK_COMMON},
    "legacy": {"q2_K": "iq4_nl", "q3_K": "iq4_nl", **_FALLBACK_COMMON},
}
REVISIONS = tuple(FALLBACK)

_LAYER_MAP = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.qkv_proj": "attn_qkv",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "block_sparse_moe.gate": "ffn_gate_inp",
}
_EXPERT_MAP = {"w1": "ffn_gate_exps", "w2": "ffn_down_exps", "w3": "ffn_up_exps"}
_TOP_MAP = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}

_LAYER_RE = re.compile(r"^(?:model\.)?layers\.(\d+)\.(.+)$")
_EXPERT_RE = re.compile(r"^block_sparse_moe\.experts\.\d+\.(w[123])$")
_BLK_RE = re.compile(r"^blk\.(\d+)\.")


def hf_to_gguf_name(hf_name: str) -> str:
    """HF module name of a Llama-family model -> llama.cpp tensor name (without ``.weight``).

    ``model.embed_tokens`` -> ``token_embd``, ``lm_head`` -> ``output``, ``model.norm`` ->
    ``output_norm``, ``model.layers.N.self_attn.v_proj`` -> ``blk.N.attn_v``,
    ``model.layers.N.mlp.down_proj`` -> ``blk.N.ffn_down``; Mixtral experts
    ``model.layers.N.block_sparse_moe.experts.E.w2`` -> ``blk.N.ffn_down_exps`` (the experts are
    one 3-D tensor in GGUF). A trailing ``.weight`` is accepted. Unknown names raise ValueError.
    """
    name = hf_name[: -len(".weight")] if hf_name.endswith(".weight") else hf_name
    if name in _TOP_MAP:
        return _TOP_MAP[name]
    if name in ("embed_tokens", "norm"):
        return _TOP_MAP["model." + name]
    m = _LAYER_RE.match(name)
    if m:
        layer, rest = int(m.group(1)), m.group(2)
        if rest in _LAYER_MAP:
            return f"blk.{layer}.{_LAYER_MAP[rest]}"
        e = _EXPERT_RE.match(rest)
        if e:
            return f"blk.{layer}.{_EXPERT_MAP[e.group(1)]}"
    raise ValueError(f"not a Llama-family tensor name: {hf_name!r}")


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """The layers llama.cpp's *_M mixtures give more bits: the first and last eighth, and every
    third layer in between."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _category(gguf: str) -> str:
    """Broad category of a GGUF tensor name (the order of the substring tests is the source's)."""
    w = gguf + ".weight"
    if w == "output.weight":
        return "output"
    if w == "token_embd.weight":
        return "token_embd"
    for key in ("attn_qkv", "attn_kv_b", "attn_v", "attn_k", "attn_q", "attn_output"):
        if key + ".weight" in w:
            return key
    for key in ("ffn_up", "ffn_gate", "ffn_down"):
        if key in w:
            return key
    return "other"


def _quantizable(gguf: str, rows: int, cols: int) -> bool:
    w = gguf + ".weight"
    if rows <= 0 or cols <= 0:
        return False
    return "_norm.weight" not in w and "ffn_gate_inp.weight" not in w


def _layer_of(gguf: str) -> int:
    m = _BLK_RE.match(gguf)
    return int(m.group(1)) if m else -1


def _fallback(target: str, ncols: int, revision: str) -> str:
    if ncols % BLOCK_SIZE[target] == 0:
        return target
    table = FALLBACK[revision]
    if target not in table:
        raise ValueError(f"no tensor type fallback is defined for type {target} (ncols={ncols})")
    out = table[target]
    if ncols % BLOCK_SIZE[out] != 0:
        out = "f16"
    return out


def llamacpp_types(
    ftype: str,
    tensors: list[tuple[str, int, int]],
    n_layer: int,
    n_expert: int = 0,
    tied_embeddings: bool = False,
    *,
    n_gqa: int | None = None,
    revision: str = "current",
) -> dict[str, str]:
    """GGML type (``q4_K``, ``q6_K``, ``q5_0``, ``iq4_nl``, ``f16``, ...) of each tensor.

    ``tensors``: ``(hf_name, rows, cols)`` with ``rows`` = out features, ``cols`` = in features
    (the row length ggml calls ``ne[0]``), e.g. ``("model.layers.3.mlp.down_proj", 576, 1536)``.
    Pass the whole model: the attn_v counters (``i_attention_wv`` / ``n_attention_wv``) and, for
    dense models, the ffn_down counter run over the tensors present, as in llama.cpp.
    ``tied_embeddings``: the GGUF has no ``output.weight`` (``lm_head``, if listed, is the same
    tensor as ``token_embd`` and gets its type). As in llama.cpp, a list without ``lm_head`` is
    also treated as tied. ``n_gqa``: n_head // n_head_kv; by default from the attn_q / attn_k rows.
    ``revision``: "current" (commit 007dbbf) or "legacy" (commit 8784689), see the module doc.
    """
    if ftype not in DEFAULT_TYPE:
        raise ValueError(f"unsupported ftype {ftype!r}; one of {', '.join(FTYPES)}")
    if revision not in FALLBACK:
        raise ValueError(f"revision must be one of {REVISIONS}")
    default = DEFAULT_TYPE[ftype]

    # HF names -> GGUF tensors (several HF experts make one GGUF tensor)
    hf_to_gguf: dict[str, str] = {}
    shape: dict[str, tuple[int, int]] = {}
    for hf_name, rows, cols in tensors:
        g = hf_to_gguf_name(hf_name)
        if tied_embeddings and g == "output":
            g = "token_embd"  # the same storage
        hf_to_gguf[hf_name] = g
        if g not in shape:
            shape[g] = (int(rows), int(cols))

    has_output = "output" in shape
    if n_gqa is None:
        q_rows = next((shape[g][0] for g in sorted(shape, key=_layer_of) if g.endswith(".attn_q")), None)
        k_rows = next((shape[g][0] for g in sorted(shape, key=_layer_of) if g.endswith(".attn_k")), None)
        n_gqa = q_rows // k_rows if q_rows and k_rows else 1
    is_70b = n_expert != 8 and n_layer == 80 and n_gqa != 1
    moe8 = n_expert == 8

    def attn_v_like(cat: str) -> bool:
        if revision == "current":
            return cat in ("attn_v", "attn_qkv", "attn_kv_b")
        return cat == "attn_v"

    # llama_model_loader::weight_name_comparer order
    order = sorted(shape, key=lambda g: (_layer_of(g), g + ".weight"))
    n_attention_wv = sum(1 for g in order if _category(g) in ("attn_v", "attn_qkv", "attn_kv_b"))
    n_ffn_down = n_layer
    i_attention_wv = 0
    i_ffn_down = 0

    result: dict[str, str] = {}
    for g in order:
        rows, cols = shape[g]
        if not _quantizable(g, rows, cols):
            result[g] = "f32"
            continue
        cat = _category(g)
        t = default
        if cat == "output" or (not has_output and cat == "token_embd"):
            if cols % BLOCK_SIZE[t] != 0:
                t = "q8_0"
            elif t != "q8_0":
                t = "q6_K"
        elif cat == "token_embd":
            pass  # only IQ/TQ/Q2_0 ftypes change it
        elif attn_v_like(cat):
            if ftype == "Q2_K":
                t = "q4_K" if n_gqa >= 4 else "q3_K"
            elif ftype == "Q3_K_M":
                t = "q5_K" if i_attention_wv < 2 else "q4_K"
            elif ftype == "Q3_K_L":
                t = "q5_K"
            elif ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i_attention_wv, n_attention_wv):
                t = "q6_K"
            elif ftype == "Q4_K_S" and i_attention_wv < 4:
                t = "q5_K"
            if is_70b and t in ("q3_K", "q4_K"):
                t = "q5_K"
            if moe8:
                t = "q8_0"
            i_attention_wv += 1
        elif cat == "attn_k":
            if moe8:
                t = "q8_0"
        elif cat == "attn_q":
            pass
        elif cat == "ffn_down":
            if n_expert > 1:
                i_layer = _layer_of(g)
                if not 0 <= i_layer < n_ffn_down:
                    raise ValueError(f"bad layer {i_layer} for tensor {g}; n_layer={n_ffn_down}")
            else:
                i_layer = i_ffn_down
            n = n_ffn_down
            if ftype == "Q2_K":
                t = "q3_K"
            elif ftype == "Q3_K_M":
                t = "q5_K" if i_layer < n // 16 else "q4_K"
            elif ftype == "Q3_K_L":
                t = "q5_K"
            elif ftype in ("Q4_K_M", "Q5_K_M"):
                if use_more_bits(i_layer, n):
                    t = "q6_K"
            elif ftype == "Q4_K_S" and i_layer < n // 8:
                t = "q5_K"
            i_ffn_down += 1
        elif cat == "attn_output":
            if moe8:
                if ftype in ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M"):
                    t = "q5_K"
            elif ftype == "Q2_K":
                t = "q3_K"
            elif ftype == "Q3_K_M":
                t = "q4_K"
            elif ftype == "Q3_K_L":
                t = "q5_K"
        elif cat == "attn_qkv":  # reached only in the legacy revision
            if ftype in ("Q3_K_M", "Q3_K_L"):
                t = "q4_K"
            elif ftype == "Q4_K_M":
                t = "q5_K"
            elif ftype == "Q5_K_M":
                t = "q6_K"
        # ffn_gate / ffn_up / other: no rule for these ftypes
        result[g] = _fallback(t, cols, revision)

    return {hf: result[g] for hf, g in hf_to_gguf.items()}


def type_counts(types: dict[str, str], names: Iterable[str] | None = None) -> dict[str, int]:
    """How many tensors of each type (over ``names`` if given)."""
    keys = types if names is None else names
    return dict(sorted(Counter(types[k] for k in keys).items()))


def mean_bits_per_weight(types: dict[str, str], tensors: list[tuple[str, int, int]],
                         names: Iterable[str] | None = None) -> float:
    """Storage bits per weight, weighted by element count, over ``names`` (default: all)."""
    want = None if names is None else set(names)
    bits = weights = 0.0
    for name, rows, cols in tensors:
        if want is not None and name not in want:
            continue
        n = rows * cols
        bits += BITS_PER_WEIGHT[types[name]] * n
        weights += n
    return bits / weights if weights else float("nan")
