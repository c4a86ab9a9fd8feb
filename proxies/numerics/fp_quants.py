"""Exact numerics of the NVIDIA/OCP floating-point weight formats: NVFP4, MXFP4, MXFP8, FP8 (per
tensor) and FP8 (per output channel).

Every function here is vectorized torch (no Python loop over blocks) and runs on CPU and CUDA;
the result is bit-identical on both (IEEE float32 division/multiplication, round-to-nearest-even
casts). Weights are handled as 2-D ``(rows, cols)`` with ``cols`` the reduction dimension; any
float dtype is upcast to float32 first, so the numerics below are defined on float32 values.

Formats
-------
``nvfp4``  FP4 E2M1 elements; one FP8 E4M3 scale per 16 consecutive elements of a row; one FP32
           global scale per tensor -- the compressed-tensors ``nvfp4-pack-quantized`` convention
           (same as llm-compressor's NVFP4 / NVFP4A16 scheme), computed exactly as
           compressed-tensors 0.20 (``generate_gparam`` + ``calculate_qparams`` + ``quantize``):

             gs       = fl32(2688 / amax(W))            (448*6; stored as weight_global_scale)
             s_b      = fp8_e4m3(clamp(gs * fl32(amax_b / 6), +-448))   (RNE; a 0 becomes 0.125)
             eff_b    = fl32(float(s_b) / gs)
             code     = e2m1_rne(clamp(w / eff_b, +-6))
             decode   = e2m1(code) * eff_b

           ModelOpt / torchao store the reciprocal, weight_scale_2 = amax/2688, and divide in a
           different order (ModelOpt: s_b = fp8(amax_b / (6*scale_2)), w / (s_b*scale_2);
           torchao: w * ((1/scale_2)/s_b)); the grids are the same and the codes/scales differ only
           where a float32 rounding of the scale falls on the other side of a rounding boundary
           (on ten 1536x576 Gaussian weights: ModelOpt's formulas differ in 1 of 552,960 block
           scales and 3 of 8.8M codes, torchao's nvfp4_quantize in 0 scales and 1 code). An all-zero tensor gets gs = 1 (CT's
           nan_to_num fallback); an all-zero block gets the FP8 scale 0.125 (CT's eps) and codes 0.
``mxfp4``  E2M1 elements, one E8M0 (power-of-two) scale per 32, OCP MX v1.0 section 6.3:
           X = 2^(floor(log2(amax_b)) - emax_elem), emax_elem = 2; elements w/X rounded RNE and
           saturated to +-6. ggml's MXFP4 (``quantize_row_mxfp4_ref`` and gguf-py) uses the same
           exponent rule, floor(log2(amax)) - 2 + 127, with two differences: (1) it evaluates
           floor(log2f(amax)) in float, which rounds up to the next integer when amax lies within
           about one float ulp below a power of two (|log2 amax| >= 2), while we take the exact
           exponent (frexp); (2) it picks the nearest value by first-minimum search, i.e. it
           breaks the three ties 0.75, 1.75 and 3.5 (in units of X) towards zero where RNE rounds
           them up to 1, 2 and 4 (the other ties, 0.25, 1.25, 2.5 and 5, agree). Decoding is
           identical. An all-zero block gets E8M0 0 (2^-127) like ggml and torchao.
           compressed-tensors (``generate_mx_scales``) instead rounds amax to one mantissa bit
           before the floor, i.e. it bumps the exponent when amax_b/2^floor(log2 amax_b) >= 1.75 (the
           values that would otherwise saturate); torchao calls this ``EVEN``. ``quantize(...,
           mx_scale="ct")`` reproduces that rule bit-exactly; the default is the OCP rule.
``mxfp8``  E4M3 elements, E8M0 scale per 32, emax_elem = 8 (OCP); saturating RNE cast.
           ``mx_scale="ct"`` again gives compressed-tensors' rule (which rounds amax to one mantissa
           bit for MXFP8 too, i.e. bumps when amax_b/2^floor >= 1.75).
``fp8``    E4M3, one FP32 scale per tensor, s = fl32(amax/448) (ModelOpt/TensorRT-LLM, CT
           ``strategy=tensor``); w/s saturated to +-448 and cast RNE. A zero tensor gets s =
           float32 eps (CT).
``fp8_pc`` E4M3, one FP32 scale per output row, s_r = fl32(amax_r/448) (CT ``strategy=channel``,
           the FP8_DYNAMIC weight scheme).

Rounding to E2M1/E4M3 is round-to-nearest-even with saturation everywhere. A negative value that
rounds to zero keeps its sign (E2M1 code 0x8 = -0), as compressed-tensors' packer does.

Padding
-------
``cols`` need not be a multiple of the block: the last block of each row is padded with zeros
(which do not change its amax), stored and priced (``storage_bits``), and dropped on decode.
compressed-tensors forbids group sizes that do not divide the row (``_process_group`` raises),
so ``compressed_tensors_state`` raises for such shapes; ``gguf_pack`` needs ``cols`` a multiple
of the GGUF block (32 for MXFP4, 64 for NVFP4).

GGUF
----
``gguf_pack`` lays codes and block scales out in ggml's bytes: MXFP4 = 17-byte blocks of 32
(E8M0 byte, then 16 bytes with element j in the low nibble and j+16 in the high nibble); NVFP4 =
36-byte super-blocks of 64 (4 UE4M3 scale bytes -- the FP8 E4M3 bits without the sign -- then per
16-element sub-block 8 bytes, element j low nibble, j+8 high nibble). ggml decodes E2M1 as doubled
integers times half the scale, which is exact, so ``gguf.quants.dequantize`` gives exactly
e2m1(code) * scale:  for MXFP4 that is our ``dequantize`` bit for bit; for NVFP4 it is
``dequantize(q, apply_global_scale=False)`` bit for bit. GGML's NVFP4 block has no per-tensor
scale: llama.cpp's converter writes it as a separate F32 tensor ``<name>.scale`` holding
ModelOpt's weight_scale_2 (= 1/gs here, ``gguf_tensor_scale``) and multiplies the matmul output by
it (``build_lora_mm(w, x, w_s)``). So llama.cpp computes (e2m1*s_b)*fl32(1/gs) (after the dot
product) where compressed-tensors computes e2m1*fl32(s_b/gs): the same real number rounded
differently, within 2 float32 ulp of each other (tested).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from search import runtime_formats as rf


class FPFormat(NamedTuple):
    block: int | None          # elements per scale block along a row; None: per tensor / per row
    bits_per_weight: float     # exact for a full block, every scale included except per-tensor/row ones


# blocks and storage come from the one registry the cost model prices with
# (search/runtime_formats.py): nvfp4 and fp8 add 32 bits per tensor, fp8_pc 32 per row
FP_FORMATS: dict[str, FPFormat] = {n: FPFormat(rf.get(n).block, rf.get(n).bits_per_weight) for n in rf.FP_FORMATS}

E2M1_MAX = 6.0
E4M3_MAX = 448.0
_NVFP4_GS_NUM = E4M3_MAX * E2M1_MAX          # 2688
_E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
_MX_EMAX = {"mxfp4": 2, "mxfp8": 8}          # floor(log2(max normal)) of the element type
_GGUF_BLOCK = {"mxfp4": (32, 17), "nvfp4": (64, 36)}


def _check_name(name: str) -> None:
    if name not in FP_FORMATS:
        raise ValueError(f"unknown FP format {name!r}: use one of {', '.join(FP_FORMATS)}")


def storage_bits(name: str, rows: int, cols: int) -> int:
    """Exact bits a ``(rows, cols)`` weight stores in ``name``; a partial last block of a row is
    stored (and counted) as a full zero-padded block."""
    _check_name(name)
    return rf.storage_bits(name, rows * cols, cols)


def bits_per_weight(name: str, rows: int, cols: int) -> float:
    """``storage_bits`` per real (unpadded) weight."""
    return storage_bits(name, rows, cols) / (rows * cols)


@dataclass
class FPQuantized:
    """A weight quantized in one of ``FP_FORMATS``.

    codes:  uint8 (rows, padded_cols), one per element: the 4-bit E2M1 code (sign in bit 3) for
            nvfp4/mxfp4, the raw FP8 E4M3 byte for mxfp8/fp8/fp8_pc.
    scales: nvfp4: float8_e4m3fn (rows, padded_cols/16); mxfp4/mxfp8: uint8 E8M0 biased exponents
            (rows, padded_cols/32); fp8: float32 (1,); fp8_pc: float32 (rows, 1).
    global_scale: nvfp4 only, float32 (1,) = 2688/amax (compressed-tensors' weight_global_scale).
    """
    name: str
    shape: tuple[int, int]
    codes: torch.Tensor
    scales: torch.Tensor
    global_scale: torch.Tensor | None = None

    @property
    def block(self) -> int | None:
        return FP_FORMATS[self.name].block

    @property
    def padded_cols(self) -> int:
        return int(self.codes.shape[1])


# ---------------------------------------------------------------------------------------------
# element codecs

def _e2m1_encode(y: torch.Tensor) -> torch.Tensor:
    """float32 -> E2M1 code (uint8), RNE with saturation at +-6; -0 keeps its sign."""
    a = y.abs()
    # boundaries between 0, .5, 1, 1.5, 2, 3, 4, 6; ties go to the even code (0, 1, 1, 2, 2, 4, 4)
    mag = ((a > 0.25).to(torch.uint8) + (a >= 0.75) + (a > 1.25) + (a >= 1.75)
           + (a > 2.5) + (a >= 3.5) + (a > 5.0))
    return mag | (torch.signbit(y).to(torch.uint8) << 3)


def _e2m1_lut(device) -> torch.Tensor:
    v = torch.tensor(_E2M1_VALUES, dtype=torch.float32, device=device)
    return torch.cat([v, -v])


def _e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    return _e2m1_lut(codes.device)[codes.long()]


def _e4m3_encode(y: torch.Tensor) -> torch.Tensor:
    """float32 -> FP8 E4M3 byte (uint8), RNE with saturation at +-448."""
    return y.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).view(torch.uint8)


def _e4m3_decode(codes: torch.Tensor) -> torch.Tensor:
    return codes.view(torch.float8_e4m3fn).to(torch.float32)


def _e8m0_to_float(e: torch.Tensor) -> torch.Tensor:
    """Biased E8M0 exponent (uint8, 0..254) -> 2^(e-127) as float32, exactly (2^-127 is subnormal)."""
    e = e.to(torch.int32)
    bits = torch.where(e > 0, e << 23, torch.full_like(e, 0x00400000))
    return bits.view(torch.float32)


# ---------------------------------------------------------------------------------------------
# quantize / dequantize

def _pad_cols(w: torch.Tensor, block: int) -> torch.Tensor:
    pad = (-w.shape[1]) % block
    return torch.nn.functional.pad(w, (0, pad)) if pad else w


def _mx_exponent(amax: torch.Tensor, emax: int, rule: str) -> torch.Tensor:
    """Biased E8M0 exponent of each block from its amax (float32)."""
    if rule == "ct":
        # compressed-tensors round_to_power_2 with one mantissa bit: add half of the second
        # mantissa bit's weight, then keep sign+exponent (bumps when the mantissa >= 1.75)
        bits = amax.view(torch.int32)
        amax = ((bits + (1 << 21)) & 0x7F800000).view(torch.float32)
    elif rule != "floor":
        raise ValueError(f"mx_scale must be 'floor' (OCP) or 'ct' (compressed-tensors), not {rule!r}")
    _, exp = torch.frexp(amax)               # amax = m * 2^exp, m in [0.5, 1): floor(log2) = exp-1
    e = (exp.to(torch.int32) - 1 - emax + 127).clamp(0, 254)
    return torch.where(amax > 0, e, torch.zeros_like(e)).to(torch.uint8)


@torch.no_grad()
def quantize(w2d: torch.Tensor, name: str, *, mx_scale: str = "floor") -> FPQuantized:
    """Quantize a 2-D weight (rows, cols; cols the reduction dim) in ``name``.

    ``mx_scale`` (mxfp4/mxfp8 only): "floor" = OCP MX / ggml / torchao FLOOR exponent rule
    (default); "ct" = compressed-tensors' rule (see the module docstring)."""
    _check_name(name)
    if w2d.ndim != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(w2d.shape)}")
    rows, cols = (int(s) for s in w2d.shape)
    w = w2d.detach().to(torch.float32)
    if not bool(torch.isfinite(w).all()):
        raise ValueError("weight has non-finite values")
    block = FP_FORMATS[name].block

    if name in ("fp8", "fp8_pc"):
        amax = w.abs().amax() if name == "fp8" else w.abs().amax(dim=1, keepdim=True)
        s = amax / E4M3_MAX
        s = torch.where(s == 0, torch.full_like(s, torch.finfo(torch.float32).eps), s)
        codes = _e4m3_encode(w / s)
        return FPQuantized(name, (rows, cols), codes, s.reshape(1) if name == "fp8" else s)

    wp = _pad_cols(w, block)
    blocks = wp.view(rows, -1, block)
    amax_b = blocks.abs().amax(dim=-1)

    if name == "nvfp4":
        amax = w.abs().amax().clamp(min=torch.finfo(torch.float32).tiny)
        gs = torch.nan_to_num(_NVFP4_GS_NUM / amax, nan=1.0, posinf=1.0, neginf=1.0).reshape(1)
        s = gs * (amax_b / E2M1_MAX)
        s32 = s.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).to(torch.float32)
        s32 = torch.where(s32 == 0, torch.full_like(s32, 0.125), s32)   # CT's eps for FP8 scales
        s8 = s32.to(torch.float8_e4m3fn)                                 # exact: already on the grid
        eff = s32 / gs
        codes = _e2m1_encode((blocks / eff.unsqueeze(-1)).clamp(-E2M1_MAX, E2M1_MAX))
        return FPQuantized(name, (rows, cols), codes.view(rows, -1), s8, gs)

    e = _mx_exponent(amax_b, _MX_EMAX[name], mx_scale)
    y = blocks / _e8m0_to_float(e).unsqueeze(-1)
    codes = _e2m1_encode(y.clamp(-E2M1_MAX, E2M1_MAX)) if name == "mxfp4" else _e4m3_encode(y)
    return FPQuantized(name, (rows, cols), codes.view(rows, -1), e)


@torch.no_grad()
def dequantize(q: FPQuantized, *, apply_global_scale: bool = True) -> torch.Tensor:
    """Decode to float32 (rows, cols) exactly as compressed-tensors / the runtime does.

    ``apply_global_scale=False`` (nvfp4): e2m1(code) * fp8 block scale, without the per-tensor
    scale -- what a GGUF NVFP4 block decodes to."""
    rows, cols = q.shape
    if q.name in ("fp8", "fp8_pc"):
        return _e4m3_decode(q.codes) * q.scales
    block = q.block
    vals = (_e2m1_decode(q.codes) if q.name in ("nvfp4", "mxfp4") else _e4m3_decode(q.codes))
    vals = vals.view(rows, -1, block)
    if q.name == "nvfp4":
        s = q.scales.to(torch.float32)
        if apply_global_scale:
            s = s / q.global_scale
    else:
        s = _e8m0_to_float(q.scales)
    out = (vals * s.unsqueeze(-1)).view(rows, -1)
    return out[:, :cols] if out.shape[1] != cols else out


def fake_quant(w2d: torch.Tensor, name: str, *, mx_scale: str = "floor") -> torch.Tensor:
    """``dequantize(quantize(w2d, name))`` in ``w2d``'s dtype and device."""
    return dequantize(quantize(w2d, name, mx_scale=mx_scale)).to(w2d.dtype)


# ---------------------------------------------------------------------------------------------
# compressed-tensors

_CT_FORMAT = {
    "nvfp4": "nvfp4-pack-quantized",
    "mxfp4": "mxfp4-pack-quantized",
    "mxfp8": "mxfp8-quantized",
    "fp8": "float-quantized",
    "fp8_pc": "float-quantized",
}


def compressed_tensors_format(name: str) -> str:
    """The compressed-tensors ``format`` of a config group holding weights in ``name``."""
    _check_name(name)
    return _CT_FORMAT[name]


def compressed_tensors_args(name: str) -> dict:
    """The weights' QuantizationArgs of the config group, as compressed-tensors serializes them
    (equal to its presets NVFP4A16 / MXFP4A16 / MXFP8 / FP8 / FP8_DYNAMIC weights)."""
    _check_name(name)
    base = {"num_bits": 8 if name in ("mxfp8", "fp8", "fp8_pc") else 4, "type": "float",
            "symmetric": True, "group_size": None, "dynamic": False}
    if name == "nvfp4":
        return {**base, "group_size": 16, "strategy": "tensor_group", "scale_dtype": "torch.float8_e4m3fn"}
    if name in ("mxfp4", "mxfp8"):
        return {**base, "group_size": 32, "strategy": "group", "scale_dtype": "torch.uint8"}
    return {**base, "strategy": "tensor" if name == "fp8" else "channel"}


def _pack_nibbles_pairs(codes: torch.Tensor) -> torch.Tensor:
    """(rows, n) 4-bit codes -> (rows, n/2) uint8, element 2i low nibble, 2i+1 high nibble."""
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def compressed_tensors_state(q: FPQuantized, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors a compressed-tensors checkpoint stores for this weight (module ``prefix``,
    e.g. "model.layers.0.mlp.down_proj"), with the names/dtypes/shapes compressed-tensors 0.20
    writes and reads:

    nvfp4  (nvfp4-pack-quantized): weight_packed uint8 (rows, cols/2), weight_scale
           float8_e4m3fn (rows, cols/16), weight_global_scale float32 (1,)
    mxfp4  (mxfp4-pack-quantized): weight_packed uint8 (rows, cols/2), weight_scale uint8 E8M0
           (rows, cols/32)
    mxfp8  (mxfp8-quantized): weight float8_e4m3fn (rows, cols), weight_scale uint8 (rows, cols/32)
    fp8    (float-quantized): weight float8_e4m3fn, weight_scale float32 (1,)
    fp8_pc (float-quantized): weight float8_e4m3fn, weight_scale float32 (rows, 1)

    Scales of fp8/fp8_pc are float32 (the numerics here); llm-compressor run on a bf16 model
    would store them in bf16, which compressed-tensors and vLLM read alike."""
    rows, cols = q.shape
    if q.block is not None and cols % q.block:
        raise ValueError(f"compressed-tensors needs cols ({cols}) to be a multiple of the {q.name} "
                         f"group ({q.block})")
    p = f"{prefix}." if prefix and not prefix.endswith(".") else prefix
    if q.name == "nvfp4":
        return {p + "weight_packed": _pack_nibbles_pairs(q.codes).contiguous(),
                p + "weight_scale": q.scales.contiguous(),
                p + "weight_global_scale": q.global_scale.to(torch.float32).reshape(1).contiguous()}
    if q.name == "mxfp4":
        return {p + "weight_packed": _pack_nibbles_pairs(q.codes).contiguous(),
                p + "weight_scale": q.scales.contiguous()}
    weight = q.codes.view(torch.float8_e4m3fn).contiguous()
    return {p + "weight": weight, p + "weight_scale": q.scales.contiguous()}


# ---------------------------------------------------------------------------------------------
# GGUF

def gguf_pack(q: FPQuantized) -> np.ndarray:
    """ggml's bytes for an mxfp4 / nvfp4 weight: uint8 (rows, cols/block * type_size), the layout
    of GGML_TYPE_MXFP4 (32, 17 bytes) and GGML_TYPE_NVFP4 (64, 36 bytes). NVFP4's per-tensor scale
    is not in the blocks: see ``gguf_tensor_scale``."""
    if q.name not in _GGUF_BLOCK:
        raise ValueError(f"GGUF has no block type for {q.name!r} (only mxfp4 and nvfp4)")
    rows, cols = q.shape
    gblock, _ = _GGUF_BLOCK[q.name]
    if cols % gblock:
        raise ValueError(f"GGUF {q.name} needs cols ({cols}) to be a multiple of {gblock}")
    codes = q.codes.to("cpu")
    codes = torch.where(codes == 0x8, torch.zeros_like(codes), codes)   # -0 -> +0, as ggml writes it
    if q.name == "mxfp4":
        c = codes.view(rows, -1, 32)
        qs = c[..., :16] | (c[..., 16:] << 4)                                  # (rows, nb, 16)
        out = torch.cat([q.scales.to("cpu").view(rows, -1, 1), qs], dim=-1)    # (rows, nb, 17)
    else:
        c = codes.view(rows, -1, 4, 16)
        qs = (c[..., :8] | (c[..., 8:] << 4)).reshape(rows, -1, 32)            # (rows, nsb, 32)
        d = q.scales.to("cpu").view(torch.uint8).view(rows, -1, 4) & 0x7F     # UE4M3 bytes
        out = torch.cat([d, qs], dim=-1)                                       # (rows, nsb, 36)
    return out.reshape(rows, -1).numpy().astype(np.uint8, copy=False)


def gguf_tensor_scale(q: FPQuantized) -> np.ndarray:
    """The F32 per-tensor scale llama.cpp stores beside an NVFP4 weight (``<name>.scale``,
    ModelOpt's weight_scale_2): fl32(1 / global_scale)."""
    if q.name != "nvfp4":
        raise ValueError("only nvfp4 has a per-tensor scale")
    return (1.0 / q.global_scale.to("cpu", torch.float32)).numpy().reshape(1)
