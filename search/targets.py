"""Deployment targets: the runtime a policy is for decides which formats are legal, which layers
must share one (the runtime fuses them), which quantizer reproduces its numerics and which
exporter hands the result over. ``--target`` (API ``target``) picks one; a menu or policy with a
format the runtime cannot serve is refused with the reason before any measurement.

Sources for the legal sets: llama.cpp's ggml types (any type per tensor, ``--tensor-type``);
vLLM's compressed-tensors schemes (W4A16/W8A16 integer through Marlin: 4 or 8 bits, per channel or
groups of 32/64/128; FP8 per tensor or channel; NVFP4) with q/k/v, gate/up and each MoE block's
experts fused into one module that takes one scheme; ModelOpt/TensorRT-LLM (NVFP4, FP8 per
tensor, INT4-AWQ symmetric groups of 128, INT8 per channel, MXFP8), fused like vLLM; torchao's
weight-only configs (int4 asymmetric groups of 32..256, int8 per channel, FP8); MLX's affine
quantization (2–8 bits, groups of 32/64/128)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from search import runtime_formats as rf
from search.formats import Format, parse_formats
from search.layers import RUNTIME_TIES


@dataclass(frozen=True)
class Target:
    name: str
    menu: tuple[str, ...]            # the default candidates, as format labels
    why_not: Callable[[Format], str | None]  # None when the runtime serves the format, else the reason
    ties: tuple[str, ...]            # tie presets (search.layers.TIE_PRESETS) the runtime's fusion needs
    exporters: tuple[str, ...]       # the artifact or config it loads, first the one to use
    quantizers: tuple[str, ...] = ("rtn",)
    # the runtime stores a row its format's block does not divide in another type (llama.cpp's
    # fallback, which Format.stored_as prices) instead of refusing the layer
    falls_back: bool = False

    def menu_formats(self) -> list[Format]:
        return parse_formats(list(self.menu))

    def why_not_layer(self, f: Format, cols: int) -> str | None:
        """Why the runtime cannot store a layer whose rows hold ``cols`` weights in ``f``: its
        kernels and checkpoint formats need whole groups/blocks along a row (llama.cpp instead
        falls back to another type, which the cost model prices)."""
        if f.is_float or self.falls_back or f.group_size is None or cols % f.group_size == 0:
            return None
        return f"{f.label} needs rows of a multiple of {f.group_size} weights"

    def fit(self, formats: list[Format], layers, explicit: bool) -> list[Format]:
        """The menu on a model's layers: a format some layer cannot be stored in is refused when
        the job named it, and left out of the target's default menu (a layer takes one format
        for the whole table)."""
        out = []
        for f in formats:
            bad = next((l for l in layers if self.why_not_layer(f, l.in_features)), None)
            if bad is None:
                out.append(f)
            elif explicit:
                raise ValueError(f"--target {self.name} cannot store {bad.name} ({bad.in_features} inputs) in "
                                 f"{f.label}: {self.why_not_layer(f, bad.in_features)}; choose a smaller group")
        if not any(not f.is_float for f in out):
            raise ValueError(f"--target {self.name}: no format of its menu fits every layer of this model "
                             f"({', '.join(f.label for f in formats)}); name formats that do with --formats")
        return out

    def check(self, formats: list[Format]) -> None:
        """Raise ValueError naming the first format this runtime cannot serve and why."""
        for f in formats:
            why = None if f.is_float else self.why_not(f)
            if why:
                raise ValueError(f"--target {self.name} cannot serve {f.label}: {why}; its formats: {', '.join(self.menu)}")


def _llamacpp(f: Format) -> str | None:
    if f.runtime and (rf.get(f.runtime).family == "gguf" or f.runtime in ("mxfp4",)):
        return None
    return "llama.cpp stores ggml types (q2_K … q8_0, q4_0 … q5_1, iq4_nl, mxfp4), not bitplan's integer grid"


def _int_weight_only(f: Format, bits: tuple[int, ...], groups: tuple, sym: tuple[bool, ...], what: str) -> str | None:
    if f.runtime:
        return None
    if f.bits not in bits:
        return f"{what} packs {'/'.join(map(str, bits))}-bit integers, not {f.bits}-bit"
    if f.group_size not in groups:
        return f"{what} takes groups of {'/'.join('per channel' if g is None else str(g) for g in groups)}, not {f.group_size}"
    if f.symmetric not in sym:
        return f"{what} is {'symmetric' if True in sym else 'asymmetric'} only"
    return None


def _vllm(f: Format) -> str | None:
    if f.runtime and f.runtime not in ("fp8", "fp8_pc", "nvfp4"):
        return f"vLLM's compressed-tensors schemes are integer W4A16/W8A16, FP8 and NVFP4, not {f.runtime}"
    return _int_weight_only(f, (4, 8), (None, 32, 64, 128), (True, False), "vLLM's Marlin kernel")


def _modelopt(f: Format) -> str | None:
    if f.runtime and f.runtime not in ("nvfp4", "fp8", "mxfp8"):
        return f"ModelOpt exports NVFP4, FP8, MXFP8 and INT4-AWQ/INT8, not {f.runtime}"
    if not f.runtime and (f.bits, f.group_size) not in ((4, 128), (8, None)):
        return "ModelOpt's integer weights are INT4 in groups of 128 (AWQ) or INT8 per channel"
    return _int_weight_only(f, (4, 8), (None, 128), (True,), "ModelOpt's integer quantizer")


def _torchao(f: Format) -> str | None:
    if f.runtime and f.runtime != "fp8_pc":
        return f"torchao's weight-only configs are int4, int8 and float8 per row, not {f.runtime}"
    if not f.runtime and f.bits == 8:
        return _int_weight_only(f, (8,), (None,), (True,), "torchao's Int8WeightOnlyConfig")
    return _int_weight_only(f, (4,), (32, 64, 128, 256), (False,), "torchao's Int4WeightOnlyConfig")


def _mlx(f: Format) -> str | None:
    if f.runtime:
        return f"MLX quantizes affine integers, not {f.runtime}"
    return _int_weight_only(f, (2, 3, 4, 5, 6, 8), (32, 64, 128), (False,), "MLX's affine quantization")


# what vLLM/SGLang fuse (search.layers, also behind --runtime); TensorRT-LLM fuses the same
FUSED = tuple(RUNTIME_TIES["vllm"])

TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("llamacpp", ("q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"),
           _llamacpp, (), ("gguf", "llamacpp"), falls_back=True),
    Target("vllm", ("w4g128a", "w4g64a", "w4g32a", "w8pcs", "fp8_pc", "nvfp4"), _vllm, FUSED,
           ("compressed-tensors", "llmcompressor-recipe"), ("rtn", "gptq")),
    Target("modelopt", ("nvfp4", "fp8", "w4g128s", "f16"), _modelopt, FUSED, ("modelopt",)),
    Target("torchao", ("w4g32a", "w4g64a", "w4g128a", "w8pcs", "fp8_pc"), _torchao, (), ("torchao",), ("rtn", "gptq")),
    Target("mlx", ("w2g64a", "w3g64a", "w4g64a", "w6g64a", "w8g64a"), _mlx, (), ("mlx",), ("rtn", "gptq")),
)}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise ValueError(f"unknown target {name!r}: choose from {', '.join(TARGETS)}") from None
