"""A mixed-precision GGUF file for llama.cpp, written from the float model and a per-layer plan.

``write_gguf(model, tokenizer, tensor_types, path, encode)`` writes what llama.cpp's own converter
(``convert_hf_to_gguf.py`` + ``llama-quantize``) writes for a Llama-architecture model: the
``llama.*`` hyper-parameters, the byte-level BPE tokenizer (``tokenizer.ggml.*``, chat template
included), and every tensor under llama.cpp's name (``token_embd``, ``blk.N.attn_q`` …, ``output``
when the head is not tied). Each planned weight is stored in the GGML type its plan names,
packed by ``encode`` -- bitplan's own encoders, so the file holds exactly the numbers the search
measured. Weights without a plan are stored as f16, norms as f32, as llama.cpp does.

Rotary embeddings: llama.cpp rotates interleaved pairs of a head's dimensions while Hugging Face
rotates its two halves, so the converter reorders the rows of ``q_proj`` and ``k_proj`` (transformers'
GGUF loader reorders them back). The weight is packed in Hugging Face row order -- the very
rows bitplan fake-quantized -- and then the packed rows are reordered: every GGML block lies
within one row, so reordering packed rows is reordering the decoded weight's rows.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

# the GGML types a plan may name (lower case; the K of the k-quants is upper case by llama.cpp's
# spelling, but any case is accepted)
TYPE_NAMES = ("q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "mxfp4",
              "nvfp4", "f16", "bf16", "f32")

# general.file_type (llama.cpp's llama_ftype) for the type that holds most of the linear weights;
# the medium variant for the k-quants, the name llama-quantize gives a mix like ours
_FILE_TYPE = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16", "Q4_0": "MOSTLY_Q4_0",
              "Q4_1": "MOSTLY_Q4_1", "Q5_0": "MOSTLY_Q5_0", "Q5_1": "MOSTLY_Q5_1", "Q8_0": "MOSTLY_Q8_0",
              "Q2_K": "MOSTLY_Q2_K", "Q3_K": "MOSTLY_Q3_K_M", "Q4_K": "MOSTLY_Q4_K_M", "Q5_K": "MOSTLY_Q5_K_M",
              "Q6_K": "MOSTLY_Q6_K", "IQ4_NL": "MOSTLY_IQ4_NL", "MXFP4": "MOSTLY_MXFP4_MOE",
              "NVFP4": "MOSTLY_NVFP4"}

# Hugging Face module (within a decoder layer) -> llama.cpp tensor (within blk.N)
_LAYER_LINEARS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                  "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                  "mlp.down_proj": "ffn_down"}
_LAYER_NORMS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}

# llama.cpp's token types (llama_token_type)
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4

Encode = Callable[[torch.Tensor, str], np.ndarray]


class GGUFWriteError(ValueError):
    """A model, plan or tokenizer this writer cannot turn into a llama.cpp file; says why."""


def canonical_type(type_name: str) -> str:
    """A plan's type name in bitplan's spelling (``Q4_K`` -> ``q4_K``, ``IQ4_NL`` -> ``iq4_nl``)."""
    for name in TYPE_NAMES:
        if name.lower() == str(type_name).lower():
            return name
    raise GGUFWriteError(f"unknown GGML type {type_name!r}; the writer takes {', '.join(TYPE_NAMES)}")


def ggml_type(type_name: str):
    """The ``gguf.GGMLQuantizationType`` a plan's type name means (``q4_K``, ``Q4_K``, ``iq4_nl`` …)."""
    from gguf import GGMLQuantizationType
    return GGMLQuantizationType[canonical_type(type_name).upper()]


def row_bytes(type_name: str, n_cols: int) -> int:
    """Bytes of one packed row of ``n_cols`` weights; raises when the row is not whole blocks."""
    from gguf import GGML_QUANT_SIZES
    block, size = GGML_QUANT_SIZES[ggml_type(type_name)]
    if n_cols % block:
        raise GGUFWriteError(f"{type_name} packs blocks of {block} weights along a row; a row of {n_cols} "
                             f"is not whole blocks")
    return n_cols // block * size


def rope_row_order(n_rows: int, n_heads: int) -> torch.Tensor:
    """Row ``i`` of llama.cpp's q/k weight is row ``order[i]`` of Hugging Face's. Within a head HF
    keeps the first halves of the rotated pairs, then the second halves; llama.cpp interleaves
    them: its rows ``2j`` and ``2j+1`` are HF's rows ``j`` and ``j + head_dim/2``."""
    head_dim = n_rows // n_heads
    half = head_dim // 2
    if n_heads * head_dim != n_rows or 2 * half != head_dim:
        raise GGUFWriteError(f"{n_rows} rows do not split into {n_heads} heads of an even size")
    hf_rows = torch.arange(n_rows).view(n_heads, 2, half)  # [head, which half, pair]
    return hf_rows.transpose(1, 2).reshape(-1)  # [head, pair, which half]


# ---------------------------------------------------------------------------------------------
# tensors


class _Tensor:
    """One tensor of the file: its llama.cpp name, where it comes from, how it is stored."""

    def __init__(self, name: str, module: str, weight: torch.Tensor, type_name: str, planned: bool,
                 linear: bool, rope_heads: int | None = None):
        self.name, self.module, self.weight = name, module, weight
        self.planned, self.linear, self.rope_heads = planned, linear, rope_heads
        self.type_name = canonical_type(type_name)  # what encode is called with
        self.qtype = ggml_type(type_name)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.weight.shape)

    def nbytes(self) -> int:
        if self.weight.dim() == 1:
            return self.weight.numel() * 4
        rows, cols = self.shape
        return rows * row_bytes(self.type_name, cols)

    @property
    def has_scale(self) -> bool:
        """NVFP4 weights carry llama.cpp's per-tensor F32 multiplier ``<name>.scale`` (shape [1])."""
        return self.weight.dim() == 2 and self.qtype.name == "NVFP4" and self.name.startswith("blk.")

    def data(self, encode: Encode) -> np.ndarray:
        """The tensor as the file stores it: float32/float16 values, or rows of packed bytes. A
        per-tensor scale ``encode`` returns beside the bytes is kept in ``self.scale``."""
        w = self.weight.detach().to(device="cpu", dtype=torch.float32).contiguous()
        self.scale = None
        if w.dim() == 1:
            return w.numpy()
        rows, cols = w.shape
        name = self.qtype.name
        if name == "F32":
            out = w.numpy()
        elif name == "F16":
            out = w.to(torch.float16).numpy()
        elif name == "BF16":  # round to nearest even, as torch and ggml do; stored as raw bytes
            out = w.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint8).reshape(rows, cols * 2)
        else:
            packed = encode(w, self.type_name)
            if isinstance(packed, tuple):
                packed, scale = packed
                if scale is not None:
                    scale = np.asarray(scale, dtype=np.float32).reshape(-1)
                    if scale.size != 1:
                        raise GGUFWriteError(f"encode({self.module}, {self.type_name!r}) gave {scale.size} "
                                             "per-tensor scales; the file takes one")
                    if not self.has_scale and float(scale[0]) != 1.0:
                        raise GGUFWriteError(f"encode({self.module}, {self.type_name!r}) gave a per-tensor scale; "
                                             "llama.cpp applies one to the nvfp4 weights of decoder layers only")
                    self.scale = scale
            out = _checked(packed, rows, row_bytes(self.type_name, cols), self)
        if self.rope_heads is not None:
            out = out[rope_row_order(rows, self.rope_heads).numpy()]
        return np.ascontiguousarray(out)


def _scale_name(weight_name: str) -> str:
    return weight_name[:-len(".weight")] + ".scale"


def _checked(packed: Any, rows: int, nbytes: int, t: _Tensor) -> np.ndarray:
    if isinstance(packed, torch.Tensor):
        packed = packed.detach().cpu().numpy()
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.size != rows * nbytes:
        raise GGUFWriteError(f"encode({t.module}, {t.type_name!r}) gave {packed.dtype} {packed.shape}; the file needs "
                             f"uint8 ({rows}, {nbytes}): {rows} rows of {nbytes} bytes")
    return packed.reshape(rows, nbytes)


def _layers(model) -> tuple[Any, Any, list]:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if inner is None or layers is None or not hasattr(model, "lm_head"):
        raise GGUFWriteError("the GGUF writer takes a Hugging Face LlamaForCausalLM (model.model.layers, lm_head)")
    return inner, model.lm_head, list(layers)


def _is_tied(model, inner) -> bool:
    head, embed = model.lm_head.weight, inner.embed_tokens.weight
    return head is embed or (head.data_ptr() == embed.data_ptr() and head.shape == embed.shape)


def _plan_tensors(model, tensor_types: dict[str, str]) -> tuple[list[_Tensor], bool]:
    """Every tensor of the file, in llama.cpp's order; the plan's module names checked first."""
    cfg = model.config
    inner, head, layers = _layers(model)
    types = dict(tensor_types)
    known: set[str] = set()
    tensors: list[_Tensor] = []

    def add(name, module, weight, default, linear, rope_heads=None):
        known.add(module)
        planned = module in types
        tensors.append(_Tensor(name, module, weight, types.get(module, default), planned, linear, rope_heads))

    tied = _is_tied(model, inner)
    # a tied head shares token_embd: the plan may name it by either module; the file unties them
    # only when the plan asks for two different types
    embed_type = types.get("model.embed_tokens")
    head_type = types.get("lm_head")
    untie = tied and embed_type is not None and head_type is not None and ggml_type(embed_type) != ggml_type(head_type)
    if tied and not untie and embed_type is None and head_type is not None:
        types["model.embed_tokens"] = head_type
    add("token_embd.weight", "model.embed_tokens", inner.embed_tokens.weight, "f16", False)
    if tied and not untie:
        known.add("lm_head")
        tensors[-1].planned = "model.embed_tokens" in tensor_types or "lm_head" in tensor_types
    n_head, n_kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    for i, layer in enumerate(layers):
        for sub, norm in _LAYER_NORMS.items():
            add(f"blk.{i}.{norm}.weight", f"model.layers.{i}.{sub}", getattr(layer, sub).weight, "f32", False)
        for sub, short in _LAYER_LINEARS.items():
            module = layer.get_submodule(sub)
            if getattr(module, "bias", None) is not None:
                raise GGUFWriteError(f"model.layers.{i}.{sub} has a bias; the Llama GGUF writer handles bias-free "
                                     "attention and MLP only")
            heads = n_head if short == "attn_q" else n_kv if short == "attn_k" else None
            add(f"blk.{i}.{short}.weight", f"model.layers.{i}.{sub}", module.weight, "f16", True, heads)
    add("output_norm.weight", "model.norm", inner.norm.weight, "f32", False)
    if not tied or untie:
        add("output.weight", "lm_head", head.weight, "f16", True)

    unknown = sorted(set(tensor_types) - known)
    if unknown:
        raise GGUFWriteError(f"the plan names modules the file has no tensor for: {', '.join(unknown[:5])}"
                             + (" …" if len(unknown) > 5 else ""))
    for t in tensors:
        if t.weight.dim() == 1 and t.planned and t.qtype.name != "F32":
            raise GGUFWriteError(f"{t.module} is a norm: llama.cpp keeps norms f32")
    bad = []
    for t in tensors:
        if t.weight.dim() == 2:
            try:
                t.nbytes()
            except GGUFWriteError as e:
                bad.append(f"{t.module} ({t.shape[0]}x{t.shape[1]}): {e}")
    if bad:
        raise GGUFWriteError("planned types that do not fit the rows: " + "; ".join(bad[:4])
                             + (f"; and {len(bad) - 4} more" if len(bad) > 4 else ""))
    return tensors, untie


# ---------------------------------------------------------------------------------------------
# tokenizer


def _tokenizer_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise GGUFWriteError("the tokenizer has no fast (tokenizers) backend; the GGUF writer reads its vocabulary, "
                             "merges and pre-tokenizer from there")
    return json.loads(backend.to_str())


def _pre_tokenizer_name(tok_json: dict) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer (``tokenizer.ggml.pre``), for the shapes
    recognised here: GPT-2's regex (``gpt-2``), and single digits before it (``smollm``). llama.cpp's
    converter fingerprints the tokenizer instead; any other shape must be named by the caller."""
    pre = tok_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    raise GGUFWriteError(f"the tokenizer's pre-tokenizer ({' + '.join(map(str, kinds)) or 'none'}) has no known "
                         "llama.cpp name: pass pre= (the tokenizer.ggml.pre llama.cpp's converter writes for the model)")


def _looks_special(token: str) -> bool:
    return (token.startswith("<|") and token.endswith("|>")) or (token.startswith("<｜") and token.endswith("｜>"))


def _vocab(tokenizer, n_vocab: int) -> tuple[list[str], list[int]]:
    vocab = tokenizer.get_vocab()
    if len(vocab) > n_vocab or max(vocab.values()) >= n_vocab:
        raise GGUFWriteError(f"the tokenizer has {len(vocab)} tokens (ids up to {max(vocab.values())}) but the "
                             f"model embeds {n_vocab}")
    added = {i: t for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    by_id = {i: t for t, i in vocab.items()}
    tokens, kinds = [], []
    for i in range(n_vocab):
        token = by_id.get(i)
        if token is None:  # a row of the embedding no token uses: llama.cpp's placeholder
            tokens.append(f"[PAD{i}]")
            kinds.append(_USER_DEFINED)
        elif i in added:
            tokens.append(token)
            kinds.append(_CONTROL if added[i].special or _looks_special(token) else _USER_DEFINED)
        else:
            tokens.append(token)
            kinds.append(_NORMAL)
    return tokens, kinds


def _special_id(tokenizer, config, attr: str) -> int | None:
    value = getattr(tokenizer, f"{attr}_token_id", None)
    if value is None:
        value = getattr(config, f"{attr}_token_id", None)
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return None if value is None else int(value)


def _adds(tokenizer, bos: int | None, eos: int | None) -> tuple[bool, bool]:
    """Whether encoding adds BOS / EOS, found by encoding (what llama.cpp must then do too)."""
    plain = tokenizer("Hello world", add_special_tokens=False)["input_ids"]
    full = tokenizer("Hello world")["input_ids"]
    extra = len(full) - len(plain)
    add_bos = extra > 0 and bos is not None and full[0] == bos and full[1:1 + len(plain)] == plain
    add_eos = extra > 0 and eos is not None and full[-1] == eos and full[-1 - len(plain):-1] == plain
    return bool(add_bos), bool(add_eos)


def _write_tokenizer(w, tokenizer, config, pre: str | None) -> dict:
    tok_json = _tokenizer_json(tokenizer)
    model = tok_json.get("model") or {}
    decoder = (tok_json.get("decoder") or {}).get("type")
    if model.get("type") != "BPE" or decoder != "ByteLevel":
        raise GGUFWriteError(f"the tokenizer is {model.get('type')} with a {decoder} decoder; the GGUF writer "
                             "handles byte-level BPE tokenizers (llama.cpp's gpt2 model) only")
    pre = pre or _pre_tokenizer_name(tok_json)
    tokens, kinds = _vocab(tokenizer, int(config.vocab_size))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(kinds)
    w.add_token_merges(merges)
    ids = {k: _special_id(tokenizer, config, k) for k in ("bos", "eos", "unk", "pad")}
    setters = {"bos": w.add_bos_token_id, "eos": w.add_eos_token_id, "unk": w.add_unk_token_id,
               "pad": w.add_pad_token_id}
    for k, v in ids.items():
        if v is not None:
            setters[k](v)
    add_bos, add_eos = _adds(tokenizer, ids["bos"], ids["eos"])
    w.add_add_bos_token(add_bos)
    w.add_add_eos_token(add_eos)
    byte_level = [s for s in ((tok_json.get("pre_tokenizer") or {}).get("pretokenizers")
                              or [tok_json.get("pre_tokenizer") or {}]) if s.get("type") == "ByteLevel"]
    w.add_add_space_prefix(bool(byte_level and byte_level[0].get("add_prefix_space", False)))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        w.add_chat_template(template)
    return {"model": "gpt2", "pre": pre, "tokens": len(tokens), "merges": len(merges),
            "added": sum(k != _NORMAL for k in kinds), "add_bos": add_bos, "add_eos": add_eos,
            "chat_template": bool(isinstance(template, str) and template), **{f"{k}_id": v for k, v in ids.items()}}


# ---------------------------------------------------------------------------------------------
# hyper-parameters


def _rope(cfg) -> tuple[float, dict]:
    params = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    theta = params.get("rope_theta", getattr(cfg, "rope_theta", None))
    if theta is None:
        raise GGUFWriteError("the model's config has no rope_theta")
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    if kind not in ("default", "linear"):
        raise GGUFWriteError(f"rope type {kind!r} is not written yet (default and linear are)")
    return float(theta), ({"type": "linear", "factor": float(params["factor"])} if kind == "linear" else {})


def _write_hparams(w, cfg, name: str, file_type: int) -> None:
    from gguf import RopeScalingType
    if getattr(cfg, "model_type", "llama") not in ("llama", "mistral"):
        raise GGUFWriteError(f"the GGUF writer takes Llama-architecture models, not {cfg.model_type!r}")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise GGUFWriteError(f"llama.cpp's llama graph uses SiLU; the model uses {cfg.hidden_act!r}")
    n_head = int(cfg.num_attention_heads)
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_head)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head)
    theta, scaling = _rope(cfg)
    w.add_type("model")
    w.add_name(name)
    w.add_context_length(int(cfg.max_position_embeddings))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_block_count(int(cfg.num_hidden_layers))
    w.add_feed_forward_length(int(cfg.intermediate_size))
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_file_type(file_type)
    w.add_vocab_size(int(cfg.vocab_size))
    w.add_rope_dimension_count(head_dim)
    if scaling:
        w.add_rope_scaling_type(RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(scaling["factor"])


def _add_metadata(w, metadata: dict[str, Any]) -> None:
    for key, value in metadata.items():
        w.kv_data[0].pop(key, None)  # an override replaces the value written above, quietly
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value) if value >= 0 else w.add_int32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, (list, tuple)):
            w.add_array(key, list(value))
        else:
            raise GGUFWriteError(f"metadata {key!r}: {type(value).__name__} is not a GGUF value")


def _model_name(cfg) -> str:
    name = getattr(cfg, "_model_name_or_path", None) or getattr(cfg, "name_or_path", None) or "model"
    return Path(str(name)).name or str(name)


# ---------------------------------------------------------------------------------------------


def write_gguf(model, tokenizer, tensor_types: dict[str, str], path, encode: Encode, *, name: str | None = None,
               pre: str | None = None, metadata: dict[str, Any] | None = None) -> dict:
    """Write ``model`` (a float Hugging Face LlamaForCausalLM) as one GGUF file llama.cpp and
    transformers load, each weight in the GGML type ``tensor_types`` gives its module.

    ``tensor_types``: HF module name (``model.layers.3.self_attn.q_proj``, ``model.embed_tokens``,
    ``lm_head``) -> GGML type name (``q2_K`` … ``q6_K``, ``q8_0``, ``q4_0``, ``q4_1``, ``q5_0``,
    ``q5_1``, ``iq4_nl``, ``mxfp4``, ``nvfp4``, ``f16``, ``bf16``, ``f32``). Modules it does not
    name are stored f16, norms f32. With tied embeddings ``lm_head`` and ``model.embed_tokens`` are
    one tensor, stored in the type either names; two different types untie them in the file.
    ``encode(w2d, type_name)``: the packed rows of a float32 (out, in) weight in that type, numpy
    uint8 (out, bytes per row), rows in Hugging Face order; called for the block types only (the
    float types are rounded here, to nearest even). For nvfp4 it may return ``(bytes, scale)``:
    the per-tensor F32 multiplier (compressed-tensors' 1/global_scale) llama.cpp reads from
    ``blk.N.<tensor>.scale`` -- written for every nvfp4 decoder weight, 1.0 when none is given.
    (Such a file is for llama.cpp only: transformers 5.x's GGUF loader drops ``.scale`` tensors
    and fails on those of ``attn_q``/``attn_k``, which it tries to un-permute.)
    ``pre``: llama.cpp's pre-tokenizer name, when
    the tokenizer's is not one recognised (``gpt-2``, ``smollm``); ``metadata``: extra or
    overriding key/values (``general.license`` …).

    Returns ``{"path", "file_bytes", "file_type", "tied", "tensor_scales", "tokenizer": {...}, "tensors": {gguf
    name: {"module", "type", "shape", "bytes", "planned"}}, "linear_params", "linear_bytes",
    "bits_per_weight" (all linear weights: the decoder's and an untied head), "planned_bits_per_weight"
    (the modules the plan names)}``. The file is written beside ``path`` and renamed into place.
    """
    import gguf

    cfg = model.config
    tensors, untied = _plan_tensors(model, tensor_types)
    linear = [t for t in tensors if t.linear]
    by_type = Counter()
    for t in linear:
        by_type[t.qtype.name] += t.weight.numel()
    file_type = int(gguf.LlamaFileType[_FILE_TYPE[by_type.most_common(1)[0][0]]])

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    w = gguf.GGUFWriter(None, arch="llama")
    try:
        _write_hparams(w, cfg, name or _model_name(cfg), file_type)
        tok_info = _write_tokenizer(w, tokenizer, cfg, pre)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_metadata(w, metadata or {})
        for t in tensors:  # shapes and sizes first: the header precedes the data
            if t.weight.dim() == 1:
                w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes())
            elif t.qtype.name in ("F32", "F16"):
                w.add_tensor_info(t.name, t.shape, np.dtype(np.float32 if t.qtype.name == "F32" else np.float16),
                                  t.nbytes())
            else:
                rows, cols = t.shape
                w.add_tensor_info(t.name, (rows, row_bytes(t.type_name, cols)), np.dtype(np.uint8), t.nbytes(),
                                  raw_dtype=t.qtype)
            if t.has_scale:
                w.add_tensor_info(_scale_name(t.name), (1,), np.dtype(np.float32), 4)
        w.open_output_file(tmp)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        scales = {}
        for t in tensors:  # one weight encoded at a time: memory stays one tensor deep
            w.write_tensor_data(t.data(encode))
            if t.has_scale:  # 1.0 when encode gives none: the header already promised the tensor
                scales[_scale_name(t.name)] = float(t.scale[0]) if t.scale is not None else 1.0
                w.write_tensor_data(np.array([scales[_scale_name(t.name)]], dtype=np.float32))
        w.close()
        tmp.replace(path)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise

    def bpw(ts):
        n = sum(t.weight.numel() for t in ts)
        return 8.0 * sum(t.nbytes() for t in ts) / n if n else None

    planned = [t for t in tensors if t.planned and t.weight.dim() == 2]
    return {
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "file_type": gguf.LlamaFileType(file_type).name,
        "tied": not untied and _is_tied(model, model.model),
        "tensor_scales": scales,
        "tokenizer": tok_info,
        "tensors": {t.name: {"module": t.module, "type": t.qtype.name, "shape": list(t.shape), "bytes": t.nbytes(),
                             "planned": t.planned} for t in tensors},
        "linear_params": sum(t.weight.numel() for t in linear),
        "linear_bytes": sum(t.nbytes() for t in linear),
        "bits_per_weight": bpw(linear),
        "planned_bits_per_weight": bpw(planned),
    }


def gguf_quants_encode(w2d: torch.Tensor, type_name: str) -> np.ndarray:
    """An ``encode`` from the ``gguf`` package's reference quantizers (Q4_0, Q4_1, Q5_0, Q5_1,
    Q8_0, MXFP4): a stand-in for bitplan's own encoders, for tests and comparisons."""
    from gguf.quants import quantize
    return quantize(w2d.detach().to(torch.float32).cpu().numpy(), ggml_type(type_name))
