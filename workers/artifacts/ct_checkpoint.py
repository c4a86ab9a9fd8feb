"""A real compressed-tensors checkpoint from a bitplan policy: the codes, scales and zero points
bitplan measured, packed the way compressed-tensors stores them, in a directory transformers
(``AutoModelForCausalLM.from_pretrained``) and vLLM load.

What is written (``write_compressed_tensors``):

- ``model.safetensors``: for every quantized Linear ``<name>.weight_packed`` (int32, the codes
  packed along the reduction dim), ``<name>.weight_scale`` (float16: bitplan's scales are
  fp16-rounded, so they are stored exactly), ``<name>.weight_zero_point`` (asymmetric only: int32,
  packed along the *output* dim as compressed-tensors packs zero points), ``<name>.weight_shape``
  (int64 ``[rows, cols]``); every other parameter as float (``float_dtype``, float32 by default so
  the loaded model reproduces the in-process fake-quantized one bit for bit);
- ``config.json`` with a ``quantization_config``: one config group per distinct compressed-tensors
  scheme, targets anchored ``re:`` patterns (a fused sibling set such as q/k/v also matches its
  fused name, as vLLM re-matches against ``qkv_proj``), ``ignore`` = every Linear left float
  (``lm_head`` included; vLLM refuses a Linear no target matches), ``format`` ``pack-quantized``
  (one group) or ``mixed-precision`` (each group then names its own ``format``);
- tokenizer and generation files (copied from ``hf_dir`` when given, else saved).

Loading: ``load_with_transformers(dir)`` is ``AutoModelForCausalLM.from_pretrained(dir)`` plus a
guard for a compressed-tensors bug (0.20.1: before loading, the empty model's asymmetric modules
keep an *unpacked* int8 zero point, so the packed one every pack-quantized checkpoint stores fails
with a size mismatch); symmetric checkpoints load with the plain call. Layers decompress to
float on CPU (on the first forward pass, or at once here). Do not load a mixed checkpoint with
``CompressedTensorsConfig(dequantize=True)`` (``run_compressed=False``): transformers 5.x then
decodes every layer with the first config group's scheme.

compressed-tensors' integer convention is signed: a bitplan code q (asymmetric: q in
[0, 2^b-1] with zero point z; symmetric: q in [-2^(b-1), 2^(b-1)-1], z = 0) is stored as
q_ct = q − 2^(b−1) and z_ct = z − 2^(b−1); it decodes (q_ct − z_ct)·s = (q − z)·s, which is
bitplan's ŵ. Packing adds 2^(b−1) back, so the packed words hold q (and z) unsigned.

Bits that do not divide 32 (3, 5, 6, 7): compressed-tensors packed them ``32 // b`` to a word
(high bits wasted) until it switched to dense packing (``ceil(n·b/32)`` words, values crossing
word boundaries); both readers agree for 2, 4 and 8 bits only. ``packing="auto"`` writes the layout
of the installed compressed-tensors (dense when none is installed).

RTN codes are ``quantize_on_grid``'s own (clamp(round(x/s) + z)), so they decode to ``rtn`` by
construction. A given ŵ (GPTQ) is checked, not assumed: its codes are recovered as
round(ŵ/s) + z on the grid of the original weight (``group_params``) and must decode back to ŵ bit
for bit, or the write fails naming the layer. That grid is GPTQ's with act-order (static groups)
or per-channel, when no input column is dead (GPTQ zeroes dead columns before taking the grid);
GPTQ without act-order sets a group's scale from the weights as updated so far, so pass that grid
explicitly (``LayerWeight(scale=..., zero=...)``).

FP formats (``"nvfp4"``, ``"mxfp4"``, ``"mxfp8"``, ``"fp8"``, ``"fp8_pc"``, or a ``Format`` whose
``runtime`` is one) go through ``proxies.numerics.fp_quants`` (``quantize``,
``compressed_tensors_state``, ``compressed_tensors_args``, ``compressed_tensors_format``) when
that module exists; the codes, scales and args are its, this module only places them."""
from __future__ import annotations

import importlib
import json
import math
import shutil
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from proxies.quant import group_params, grouped
from search.exports.base import anchored, anchored_any
from search.formats import Format, storage_bits
from search.layers import FUSED_NAME

FP_FORMATS = ("nvfp4", "fp8", "fp8_pc", "mxfp4", "mxfp8")
PACKINGS = ("auto", "dense", "padded")
# the files beside the weights a runtime needs to tokenize and generate
AUX_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
             "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model",
             "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json", "generation_config.json")
MAX_SHARD_BYTES = 4 << 30
# vLLM's compressed-tensors weight-only int kernels (Marlin/Machete/Exllama): what they take
VLLM_INT_BITS = (4, 8)
VLLM_GROUPS = (None, 32, 64, 128)


class CTExportError(ValueError):
    """The policy (or a weight) cannot be written as a compressed-tensors checkpoint; says why."""


@dataclass(frozen=True)
class LayerWeight:
    """What one layer's stored codes come from.

    ``original``: the float weight (module layout, 2-D for a Linear) the grid is computed from.
    ``quantized``: the dequantized weight ŵ to store (a GPTQ result); None → RTN of ``original``.
    ``scale``/``zero``: the grid, (rows, n_groups), when it is not ``group_params`` of
    ``original`` (GPTQ without act-order); ``zero`` unsigned in [0, 2^bits-1], None if symmetric."""

    original: torch.Tensor
    quantized: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    zero: torch.Tensor | None = None


# ---------------------------------------------------------------- packing


def installed_packing() -> str:
    """The layout the installed compressed-tensors reads for bits that do not divide 32:
    ``dense`` (values cross word boundaries) or ``padded`` (``32 // bits`` values a word)."""
    try:
        from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    except ImportError:
        try:
            from compressed_tensors.compressors.quantized_compressors.pack_quantized import pack_to_int32
        except ImportError:
            return "dense"
    probe = pack_to_int32(torch.zeros(1, 32, dtype=torch.int8), 3)
    return "dense" if probe.shape[-1] == 3 else "padded"


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """Unsigned 32-bit words held in int64 as the int32 with the same bits."""
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)


def pack_codes(codes: torch.Tensor, bits: int, packing: str = "dense") -> torch.Tensor:
    """Pack unsigned ``bits``-wide codes (rows, n) along the last dim into int32 words, element i
    at bit i·bits of the row's bit stream (dense), or ``32 // bits`` elements a word from bit 0
    (padded). Little-endian within a word, as compressed-tensors lays them out. The caller
    guarantees the range (codes come from a clamp); ``unpack_codes`` inverts it."""
    if packing not in ("dense", "padded"):
        raise ValueError(f"packing must be dense or padded, not {packing!r}")
    rows, n = codes.shape
    if packing == "padded" or 32 % bits == 0:
        per = 32 // bits
        v = torch.nn.functional.pad(codes.to(torch.int32), (0, (-n) % per)).reshape(rows, -1, per)
        out = v[..., 0].clone()
        for i in range(1, per):  # disjoint bit fields; the top one wraps into the sign bit
            out |= v[..., i] << (i * bits)
        return out
    # dense: 32 values fill exactly ``bits`` words, some straddling two
    v = torch.nn.functional.pad(codes.to(torch.int64), (0, (-n) % 32)).reshape(rows, -1, 32)
    start = torch.arange(32, dtype=torch.int64) * bits
    word, off = start // 32, start % 32
    out = torch.zeros(rows, v.shape[1], bits, dtype=torch.int64)
    out.index_add_(2, word, (v << off) & 0xFFFFFFFF)
    spill = off + bits > 32  # the high bits of these values start the next word
    out.index_add_(2, word[spill] + 1, v[..., spill] >> (32 - off[spill]))
    return _to_int32(out.reshape(rows, -1)[:, :math.ceil(n * bits / 32)])


def unpack_codes(words: torch.Tensor, bits: int, n: int, packing: str = "dense") -> torch.Tensor:
    """Inverse of ``pack_codes``: (rows, words) int32 → (rows, n) unsigned codes (int64)."""
    w = words.to(torch.int64) & 0xFFFFFFFF
    rows = w.shape[0]
    mask = (1 << bits) - 1
    if packing == "padded" or 32 % bits == 0:
        per = 32 // bits
        shifts = torch.arange(per, dtype=torch.int64) * bits
        return ((w.unsqueeze(-1) >> shifts) & mask).reshape(rows, -1)[:, :n]
    w = torch.nn.functional.pad(w, (0, (-w.shape[1]) % bits)).reshape(rows, -1, bits)
    w = torch.cat([w, torch.zeros_like(w[..., :1])], -1)  # a spill read past the block is 0
    start = torch.arange(32, dtype=torch.int64) * bits
    word, off = start // 32, start % 32
    lo = w[..., word] >> off
    hi = w[..., word + 1] << (32 - off)
    return ((lo | hi) & mask).reshape(rows, -1)[:, :n]


# ---------------------------------------------------------------- one layer


@dataclass
class _Layer:
    name: str
    scheme: dict            # compressed-tensors scheme (weights args + format), no targets
    tensors: dict           # full-name → tensor, as stored
    label: str
    numel: int
    bitplan_bits: int | None  # bitplan's storage model for the format (None: not priced here)


def _int_scheme(fmt: Format, strategy: str, group: int | None, actorder: str | None) -> dict:
    return {"weights": {"num_bits": fmt.bits, "type": "int", "symmetric": fmt.symmetric, "strategy": strategy,
                        "group_size": group, "block_structure": None, "dynamic": False, "actorder": actorder,
                        "observer": "minmax", "observer_kwargs": {}},
            "input_activations": None, "output_activations": None, "format": "pack-quantized"}


def _int_layer(name: str, w2d: torch.Tensor, lw: LayerWeight, fmt: Format, packing: str,
               actorder: str | None) -> _Layer:
    rows, cols = w2d.shape
    g = fmt.group_size or cols
    if g >= cols:  # one group per row: the padded group has the row's own min/max
        strategy, ct_group, g = "channel", None, cols
    elif cols % g:
        raise CTExportError(f"{name}: group size {fmt.group_size} does not divide in_features {cols}; "
                            "compressed-tensors' group strategy needs whole groups (use a group size that divides "
                            "it, or per-channel)")
    else:
        strategy, ct_group = "group", g
    x = grouped(w2d.float(), g)  # (rows, G, g)
    if lw.scale is None:
        s, z, qmin, qmax = group_params(x, fmt)
    else:
        s = lw.scale.float().reshape(rows, -1, 1)
        z = torch.zeros_like(s) if fmt.symmetric or lw.zero is None else lw.zero.float().reshape(rows, -1, 1)
        if fmt.symmetric:
            qmin, qmax = -(1 << (fmt.bits - 1)), (1 << (fmt.bits - 1)) - 1
        else:
            qmin, qmax = 0, (1 << fmt.bits) - 1
        if s.shape[1] != x.shape[1]:
            raise CTExportError(f"{name}: the given scale has {s.shape[1]} groups a row, the format {x.shape[1]}")
        if not (torch.equal(z, torch.round(z)) and float(z.min()) >= 0 and float(z.max()) <= (1 << fmt.bits) - 1):
            raise CTExportError(f"{name}: zero points must be integers in [0, {(1 << fmt.bits) - 1}]")
    if not torch.equal(s.half().float(), s):
        raise CTExportError(f"{name}: scales are not float16 values; they could not be stored exactly")
    if lw.quantized is None:  # RTN: the codes quantize_on_grid decodes, ŵ = (q − z)·s by construction
        q = torch.clamp(torch.round(x / s) + z, qmin, qmax)
    else:  # a given ŵ (GPTQ): recover its codes on the grid and check they decode to it exactly
        wq = lw.quantized.detach().cpu().float().reshape(rows, cols)
        xq = grouped(wq, g)
        q = torch.round(xq / s) + z
        if float(q.min()) < qmin or float(q.max()) > qmax:
            raise CTExportError(f"{name}: ŵ lies off the {fmt.label} grid of the original weight (codes outside "
                                f"[{qmin}, {qmax}]); pass the grid the quantizer used (LayerWeight scale/zero)")
        if not torch.equal((q - z) * s, xq):
            bad = int(((q - z) * s != xq).sum())
            raise CTExportError(f"{name}: {bad} weight(s) of ŵ are not on the {fmt.label} grid of the original "
                                "weight; pass the grid the quantizer used (LayerWeight scale/zero)")
    half = 1 << (fmt.bits - 1)
    stored = (q + half if fmt.symmetric else q).reshape(rows, cols).to(torch.int32)  # = q_ct + 2^(b-1)
    packed = pack_codes(stored, fmt.bits, packing)
    t = {f"{name}.weight_packed": packed,
         f"{name}.weight_scale": s.reshape(rows, -1).half().contiguous(),
         f"{name}.weight_shape": torch.tensor([rows, cols], dtype=torch.int64)}
    if not fmt.symmetric:  # zero points packed along the output dim (one column per group)
        zs = z.reshape(rows, -1).to(torch.int32)  # = z_ct + 2^(b-1)
        t[f"{name}.weight_zero_point"] = pack_codes(zs.t().contiguous(), fmt.bits, packing).t().contiguous()
    return _Layer(name, _int_scheme(fmt, strategy, ct_group, actorder), t, fmt.label, rows * cols,
                  storage_bits(fmt, rows * cols, cols))


def _fp_numerics():
    try:
        return importlib.import_module("proxies.numerics.fp_quants")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("proxies"):
            raise CTExportError("FP formats (nvfp4, fp8, …) need proxies/numerics/fp_quants.py, which this "
                                "install does not have") from None
        raise


def _fp_layer(name: str, w2d: torch.Tensor, lw: LayerWeight, fmt_name: str) -> _Layer:
    """An FP layer: the codes, scales and compressed-tensors args come from ``fp_quants``."""
    fp = _fp_numerics()
    if lw.quantized is not None or lw.scale is not None:
        raise CTExportError(f"{name}: {fmt_name} is written from the original weight (fp_quants.quantize); "
                            "a given ŵ or grid is not taken")
    q = fp.quantize(w2d.float(), fmt_name)
    state = fp.compressed_tensors_state(q, name)
    tensors = {}
    for k, v in state.items():
        key = k if k.startswith(name + ".") else f"{name}.{k.lstrip('.')}"
        tensors[key] = v.contiguous() if isinstance(v, torch.Tensor) else torch.as_tensor(v)
    args = dict(fp.compressed_tensors_args(fmt_name))
    if "weights" in args:  # a whole scheme
        scheme = {"input_activations": None, "output_activations": None, **args}
        scheme.pop("targets", None)
    else:  # the weight args only
        fmt = args.pop("format", None)
        scheme = {"weights": args, "input_activations": None, "output_activations": None, "format": fmt}
    if not scheme.get("format"):
        if not hasattr(fp, "compressed_tensors_format"):
            raise CTExportError(f"{fmt_name}: fp_quants names no compressed-tensors format for it")
        scheme["format"] = fp.compressed_tensors_format(fmt_name)
    bits = fp.storage_bits(fmt_name, *w2d.shape) if hasattr(fp, "storage_bits") else None
    return _Layer(name, scheme, tensors, fmt_name, w2d.numel(), bits)


# ---------------------------------------------------------------- config


def _targets(names: list[str]) -> list[str]:
    """Anchored patterns for one config group's layers: a complete fused sibling set (q/k/v,
    gate/up) becomes one pattern that also matches its fused name."""
    by_parent: dict[str, list[str]] = {}
    for n in names:
        by_parent.setdefault(n.rsplit(".", 1)[0] if "." in n else "", []).append(n)
    out = []
    for parent, group in by_parent.items():
        leaves = {n.rsplit(".", 1)[-1]: n for n in group}
        for fused in FUSED_NAME:
            if fused <= leaves.keys():
                out.append(anchored_any([leaves.pop(x) for x in sorted(fused)]))
        out += [anchored(n) for n in leaves.values()]
    return ["re:" + p for p in out]


def _split_fused(schemes: dict[str, str]) -> list[str]:
    """Fused sibling sets (q/k/v, gate/up) whose members got different schemes (a float member
    counts as its own scheme)."""
    out = []
    parents: dict[str, dict[str, str]] = {}
    for n, key in schemes.items():
        if "." in n:
            p, leaf = n.rsplit(".", 1)
            parents.setdefault(p, {})[leaf] = key
    for p, leaves in parents.items():
        for fused in FUSED_NAME:
            if fused <= leaves.keys() and len({leaves[x] for x in fused}) > 1:
                out.append(f"{p}.{{{','.join(sorted(fused))}}}")
    return out


def _vllm_notes(layers: dict[str, _Layer], linears: list[str]) -> list[str]:
    unserved: dict[str, list[str]] = {}
    for l in layers.values():
        w = l.scheme["weights"]
        if w.get("type") == "int" and (w["num_bits"] not in VLLM_INT_BITS or w.get("group_size") not in VLLM_GROUPS):
            unserved.setdefault(l.label, []).append(l.name)
    notes = [f"{label} ({len(names)} layers, e.g. {names[0]}): vLLM's int weight-only kernels take 4 or 8 bits "
             "with groups of 32/64/128 or per-channel; transformers decompresses it" for label, names in unserved.items()]
    schemes = {n: json.dumps(layers[n].scheme, sort_keys=True) if n in layers else "float" for n in linears}
    split = _split_fused(schemes)
    if split:
        notes.append("vLLM fuses these projections and refuses differing schemes: " + ", ".join(split))
    return notes


def _dtype_note(float_dtype: torch.dtype) -> list[str]:
    if float_dtype == torch.float32:
        return ["config dtype is float32 (bit-exact with bitplan's measurements); vLLM's int kernels run in "
                "16 bits: serve with --dtype float16 (the scales are float16 values, kept exact) or bfloat16"]
    return []


# ---------------------------------------------------------------- model state


def _module_2d(module: nn.Module, name: str) -> None:
    if not isinstance(module, nn.Linear):
        raise CTExportError(f"{name} is a {type(module).__name__}: compressed-tensors checkpoints quantize "
                            "Linear layers only")


def _float_state(model: nn.Module, quantized: set[str], float_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer except quantized weights, tied copies written once."""
    out: dict[str, torch.Tensor] = {}
    seen: dict[tuple, str] = {}
    for k, v in model.state_dict().items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)) if v.numel() else None
        mod = k.rsplit(".", 1)[0]
        if key is not None and key in seen:
            if mod in quantized or seen[key].rsplit(".", 1)[0] in quantized:
                raise CTExportError(f"{k} is tied to {seen[key]}: a tied weight cannot be quantized on one side "
                                    "only (keep both float)")
            continue  # the tie is restored from the config (tie_word_embeddings)
        if key is not None:
            seen[key] = k
        if k == mod + ".weight" and mod in quantized:
            continue
        t = v.detach().cpu()
        out[k] = (t.to(float_dtype) if t.is_floating_point() else t).contiguous()
    return out


def _save_tensors(tensors: dict[str, torch.Tensor], out: Path) -> list[Path]:
    from safetensors.torch import save_file
    sizes = {k: v.numel() * v.element_size() for k, v in tensors.items()}
    if sum(sizes.values()) <= MAX_SHARD_BYTES:
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
        return [out / "model.safetensors"]
    shards, cur, cur_bytes = [], {}, 0
    for k in tensors:
        if cur and cur_bytes + sizes[k] > MAX_SHARD_BYTES:
            shards.append(cur)
            cur, cur_bytes = {}, 0
        cur[k], cur_bytes = tensors[k], cur_bytes + sizes[k]
    shards.append(cur)
    files, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        f = out / f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(f), metadata={"format": "pt"})
        files.append(f)
        weight_map.update({k: f.name for k in shard})
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}, indent=2))
    return files


def _fmt_of(fmt: Any) -> tuple[str, Format | str]:
    """('float' | 'int' | 'fp', the format)."""
    if isinstance(fmt, str):
        if fmt in ("f16", "fp16", "float"):
            return "float", Format(16)
        if fmt not in FP_FORMATS:
            raise CTExportError(f"unknown format {fmt!r}: use a bitplan Format or one of {', '.join(FP_FORMATS)}")
        return "fp", fmt
    if not isinstance(fmt, Format):
        raise CTExportError(f"a layer format must be a bitplan Format or an FP format name, not {type(fmt).__name__}")
    if fmt.is_float:
        return "float", fmt
    runtime = getattr(fmt, "runtime", "")
    if runtime:
        if runtime not in FP_FORMATS:
            raise CTExportError(f"{runtime} is a GGUF type: compressed-tensors stores int and FP formats only")
        return "fp", runtime
    return "int", fmt


# ---------------------------------------------------------------- entry point


def write_compressed_tensors(model: nn.Module, tokenizer, layer_formats: Mapping[str, Any],
                             weights: Mapping[str, torch.Tensor | LayerWeight] | None = None,
                             out_dir: str | Path = ".", hf_dir: str | Path | None = None, *,
                             float_dtype: torch.dtype = torch.float32, packing: str = "auto",
                             actorder: str | None = None) -> dict:
    """Write ``model`` with ``layer_formats`` (HF module name → bitplan ``Format``, or an FP
    format name) as a compressed-tensors checkpoint in ``out_dir``.

    ``weights``: module name → the layer's original float weight (a tensor) or a ``LayerWeight``
    (original + GPTQ ŵ, optionally its grid); a quantized layer missing here uses the model's own
    weight, RTN. ``model``'s other parameters are written as they are (``float_dtype``).
    ``hf_dir``: the float model's HF directory, whose tokenizer/generation files are copied.
    ``actorder="weight"`` records that GPTQ ran with act-order (static groups).

    Returns a summary: per-layer format, scheme and stored bytes, config groups, file sizes and
    notes on what vLLM would refuse."""
    if packing not in PACKINGS:
        raise ValueError(f"packing must be one of {PACKINGS}")
    pack = installed_packing() if packing == "auto" else packing
    weights = weights or {}
    modules = dict(model.named_modules())
    unknown = sorted(set(layer_formats) - set(modules)) + sorted(set(weights) - set(layer_formats))
    if unknown:
        raise CTExportError(f"not a layer of the policy/model: {', '.join(unknown[:5])}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    layers: dict[str, _Layer] = {}
    for name, raw in layer_formats.items():
        kind, fmt = _fmt_of(raw)
        if kind == "float":
            continue
        if name == "lm_head" or name.endswith(".lm_head"):
            raise CTExportError("lm_head is kept float (it is in `ignore`)")
        _module_2d(modules[name], name)
        lw = weights.get(name, modules[name].weight)
        lw = lw if isinstance(lw, LayerWeight) else LayerWeight(lw)
        w2d = lw.original.detach().cpu().float()
        if tuple(w2d.shape) != tuple(modules[name].weight.shape):
            raise CTExportError(f"{name}: weight {tuple(w2d.shape)} is not the module's {tuple(modules[name].weight.shape)}")
        if kind == "int":
            layers[name] = _int_layer(name, w2d, lw, fmt, pack, actorder)
        else:
            layers[name] = _fp_layer(name, w2d, lw, fmt)
    if not layers:
        raise CTExportError("the policy quantizes no layer")

    # config groups: one per distinct scheme, most weights first, model order within
    by_scheme: dict[str, list[str]] = {}
    for n, l in layers.items():
        by_scheme.setdefault(json.dumps(l.scheme, sort_keys=True), []).append(n)
    order = sorted(by_scheme, key=lambda k: -sum(layers[n].numel for n in by_scheme[k]))
    position = {n: i for i, n in enumerate(modules)}
    groups = {}
    for i, key in enumerate(order):
        names = sorted(by_scheme[key], key=position.__getitem__)
        groups[f"group_{i}"] = {"targets": _targets(names), **json.loads(key)}
    formats = {g["format"] for g in groups.values()}
    top_format = "mixed-precision" if len(groups) > 1 else formats.pop()
    # every Linear left float, lm_head included: vLLM refuses a Linear that no target matches
    # unless it is ignored
    linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    ignore = [n for n in linears if n not in layers]
    if "lm_head" not in ignore:
        ignore.append("lm_head")
    qcfg = {"quant_method": "compressed-tensors", "format": top_format, "config_groups": groups, "ignore": ignore,
            "quantization_status": "compressed", "kv_cache_scheme": None, "global_compression_ratio": None,
            "sparsity_config": {}, "transform_config": {}}
    try:
        import compressed_tensors
        qcfg["version"] = compressed_tensors.__version__
    except ImportError:
        pass

    # weights
    tensors = _float_state(model, set(layers), float_dtype)
    for l in layers.values():
        clash = set(l.tensors) & set(tensors)
        if clash:
            raise CTExportError(f"{l.name}: stored names clash with float parameters: {sorted(clash)[:3]}")
        tensors.update(l.tensors)
    for f in list(out.glob("model*.safetensors")) + list(out.glob("model.safetensors.index.json")):
        f.unlink()
    files = _save_tensors(tensors, out)

    # config, tokenizer, generation
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["dtype"] = str(float_dtype).removeprefix("torch.")
    cfg.pop("torch_dtype", None)
    cfg["quantization_config"] = qcfg
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    copied = []
    if hf_dir is not None:
        for f in AUX_FILES:
            src = Path(hf_dir) / f
            if src.is_file():
                shutil.copyfile(src, out / f)
                copied.append(f)
    if tokenizer is not None and not any(f.startswith("tokenizer") for f in copied):
        tokenizer.save_pretrained(out)
    gen = getattr(model, "generation_config", None)
    if gen is not None and "generation_config.json" not in copied:
        gen.save_pretrained(out)

    group_of = {n: f"group_{i}" for i, key in enumerate(order) for n in by_scheme[key]}
    per_layer = {}
    for n, l in layers.items():
        per_layer[n] = {"format": l.label, "group": group_of[n],
                        "numel": l.numel, "bytes": sum(t.numel() * t.element_size() for t in l.tensors.values()),
                        "bitplan_bytes": None if l.bitplan_bits is None else math.ceil(l.bitplan_bits / 8)}
    q_bytes = sum(v["bytes"] for v in per_layer.values())
    file_bytes = sum(f.stat().st_size for f in files)
    return {"out_dir": str(out), "format": top_format, "packing": pack,
            "config_groups": {g: {"targets": v["targets"], "weights": v["weights"], "format": v["format"],
                                  "layers": len(by_scheme[order[i]])}
                              for i, (g, v) in enumerate(groups.items())},
            "ignore": ignore, "layers": per_layer,
            "quantized_bytes": q_bytes, "float_bytes": sum(t.numel() * t.element_size() for k, t in tensors.items()) - q_bytes,
            "file_bytes": file_bytes, "files": [f.name for f in files] + ["config.json"] + copied,
            "vllm_notes": _vllm_notes(layers, linears) + _dtype_note(float_dtype)}



# ---------------------------------------------------------------- loading with transformers


def _meta_zero_point_bug() -> bool:
    """Whether the installed compressed-tensors, compressing an empty (meta) asymmetric module
    as transformers does before loading, leaves its zero point unpacked: the model then expects
    an int8 (rows, groups) tensor where every pack-quantized checkpoint stores the packed int32
    one, and loading fails with a size mismatch."""
    try:
        from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    except ImportError:
        return False
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, symmetric=False, strategy="group", group_size=32))
    meta = {"weight": torch.empty(64, 64, device="meta"), "weight_scale": torch.empty(64, 2, device="meta"),
            "weight_zero_point": torch.empty(64, 2, dtype=torch.int8, device="meta")}
    zp = PackedQuantizationCompressor.compress(meta, scheme).get("weight_zero_point")
    return zp is not None and tuple(zp.shape) == (64, 2)


@contextmanager
def packed_zero_points_on_load():
    """While loading with transformers, give asymmetric pack-quantized modules the packed zero
    point the checkpoint stores (works around the compressed-tensors bug ``_meta_zero_point_bug``
    detects; does nothing where it is fixed)."""
    if not _meta_zero_point_bug():
        yield
        return
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor as cls
    original = cls.__dict__["compress"]

    def compress(klass, state_dict, scheme):
        out = original.__func__(klass, state_dict, scheme)
        zp, w = out.get("weight_zero_point"), scheme.weights
        if zp is not None and zp.device.type == "meta" and zp.dtype != torch.int32 and not w.symmetric:
            out = dict(out)
            out["weight_zero_point"] = torch.empty(math.ceil(zp.shape[0] * w.num_bits / 32), *zp.shape[1:],
                                                   dtype=torch.int32, device="meta")
        return out

    cls.compress = classmethod(compress)
    try:
        yield
    finally:
        cls.compress = original


def load_with_transformers(path: str | Path, dtype: torch.dtype = torch.float32, decompress: bool = True, **kwargs):
    """``AutoModelForCausalLM.from_pretrained(path, dtype=dtype)`` of a checkpoint this module
    wrote, with ``packed_zero_points_on_load``; ``decompress`` unpacks every layer now (otherwise
    compressed-tensors does it on the first forward pass)."""
    from transformers import AutoModelForCausalLM
    with packed_zero_points_on_load():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    q = getattr(model, "hf_quantizer", None)
    if decompress and q is not None and hasattr(q, "compressor"):
        q.compressor.decompress_model(model)
    return model.eval()
