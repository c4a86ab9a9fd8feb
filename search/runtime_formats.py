"""The formats runtimes serve, by their own names, with exact storage: GGUF block types as
llama.cpp stores them, NVIDIA's NVFP4, OCP's MXFP4/MXFP8 and FP8 E4M3. Pure data and arithmetic
(no torch): the cost model, validation and the API price them here; their numerics live in
``proxies/numerics``.

Bits per weight count every stored bit: codes, sub-block scales and mins, super-block scales and
per-tensor scales. A GGUF type needs rows whose length is a multiple of its block; llama.cpp
quantizes any other tensor in a fallback type (``src/llama-quant.cpp`` at 007dbbf: q2_K/q3_K → q4_0
(iq4_nl in older releases, the same 4.5 bits), q4_K → q5_0, q5_K → q5_1, q6_K → q8_0, and f16 when
even a 32-block does not divide), and a layer
here is priced and quantized in the type it really gets. The FP formats pad a partial last block
(the padding is stored, so it is priced)."""
from __future__ import annotations

import math
from dataclasses import dataclass

FLOAT = "f16"


@dataclass(frozen=True)
class RuntimeFormat:
    name: str
    family: str            # "gguf" | "fp"
    bits: int              # element bits: orders formats by precision and prices BOPs
    block: int | None      # weights per block along a row (the reduction dim); None: per row or tensor
    block_bits: int = 0    # bits one block stores: codes and every scale/min inside it
    row_bits: int = 0      # bits stored once per row beyond its blocks (per-channel scales)
    tensor_bits: int = 0   # bits stored once per tensor (a global FP32 scale)
    symmetric: bool = True
    fallback: str | None = None  # GGUF: the type llama.cpp uses when the block does not divide a row
    doc: str = ""

    @property
    def bits_per_weight(self) -> float:
        """Nominal bits per weight of a full block (the figure runtimes quote)."""
        if self.block is None:
            return float(self.bits)
        return self.block_bits / self.block


def _gguf(name, bits, block, type_size, symmetric, fallback, doc):
    return RuntimeFormat(name, "gguf", bits, block, type_size * 8, symmetric=symmetric, fallback=fallback, doc=doc)


# type sizes as ggml defines them (bytes per block); symmetric: no per-block min/offset
RUNTIME_FORMATS: dict[str, RuntimeFormat] = {f.name: f for f in (
    _gguf("q2_K", 2, 256, 84, False, "q4_0", "2-bit codes, 4-bit scale and min per 16, fp16 d/dmin per 256"),
    _gguf("q3_K", 3, 256, 110, True, "q4_0", "3-bit codes, 6-bit scale per 16, fp16 d per 256"),
    _gguf("q4_K", 4, 256, 144, False, "q5_0", "4-bit codes, 6-bit scale and min per 32, fp16 d/dmin per 256"),
    _gguf("q5_K", 5, 256, 176, False, "q5_1", "5-bit codes, 6-bit scale and min per 32, fp16 d/dmin per 256"),
    _gguf("q6_K", 6, 256, 210, True, "q8_0", "6-bit codes, 8-bit scale per 16, fp16 d per 256"),
    _gguf("q8_0", 8, 32, 34, True, FLOAT, "8-bit codes, fp16 scale per 32"),
    _gguf("q4_0", 4, 32, 18, True, FLOAT, "4-bit codes, fp16 scale per 32"),
    _gguf("q4_1", 4, 32, 20, False, FLOAT, "4-bit codes, fp16 scale and min per 32"),
    _gguf("q5_0", 5, 32, 22, True, FLOAT, "5-bit codes, fp16 scale per 32"),
    _gguf("q5_1", 5, 32, 24, False, FLOAT, "5-bit codes, fp16 scale and min per 32"),
    _gguf("iq4_nl", 4, 32, 18, True, FLOAT, "4-bit indices into a non-linear grid, fp16 scale per 32"),
    RuntimeFormat("nvfp4", "fp", 4, 16, 16 * 4 + 8, tensor_bits=32,
                  doc="FP4 E2M1, FP8 E4M3 scale per 16, FP32 tensor scale (NVIDIA)"),
    RuntimeFormat("mxfp4", "fp", 4, 32, 32 * 4 + 8, doc="FP4 E2M1, E8M0 scale per 32 (OCP MX)"),
    RuntimeFormat("mxfp8", "fp", 8, 32, 32 * 8 + 8, doc="FP8 E4M3, E8M0 scale per 32 (OCP MX)"),
    RuntimeFormat("fp8", "fp", 8, None, tensor_bits=32, doc="FP8 E4M3, one FP32 scale per tensor"),
    RuntimeFormat("fp8_pc", "fp", 8, None, row_bits=32, doc="FP8 E4M3, one FP32 scale per output channel"),
)}
GGUF_TYPES = tuple(n for n, f in RUNTIME_FORMATS.items() if f.family == "gguf")
FP_FORMATS = tuple(n for n, f in RUNTIME_FORMATS.items() if f.family == "fp")


class RuntimeFormatError(ValueError):
    """An unknown runtime format name."""


def get(name: str) -> RuntimeFormat:
    try:
        return RUNTIME_FORMATS[name]
    except KeyError:
        raise RuntimeFormatError(f"unknown format {name!r}: use one of {', '.join(RUNTIME_FORMATS)}, "
                                 "an integer format such as w4g128s, or f16") from None


def effective(name: str, cols: int) -> str:
    """The format a row of ``cols`` weights is really stored in: the type itself when its block
    divides the row, else llama.cpp's fallback chain (ending in f16). FP formats pad instead."""
    f = get(name)
    while f.family == "gguf" and cols % f.block:
        if f.fallback == FLOAT:
            return FLOAT
        f = get(f.fallback)
    return f.name


def storage_bits(name: str, numel: int, cols: int) -> int:
    """Exact bits of a ``numel``-weight tensor with rows of ``cols`` weights stored in ``name``."""
    eff = effective(name, cols)
    if eff == FLOAT:
        return numel * 16
    f = get(eff)
    rows = numel // cols
    blocks = rows if f.block is None else rows * math.ceil(cols / f.block)
    body = numel * f.bits if f.block is None else blocks * f.block_bits
    return body + rows * f.row_bits + f.tensor_bits
