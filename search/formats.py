"""Quantization formats (the candidates a layer can take) and their exact storage cost.

Cost is DESIGN §2: ``numel*bits + n_groups*(16 + (0 if symmetric else bits))`` — fp16 scales
and ``bits``-wide zero points are always counted; bits == 16 means "kept in float" and costs
``numel*16``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from search import runtime_formats as rf

FLOAT_BITS = 16
SCALE_BITS = 16
MIN_BITS, MAX_BITS = 2, 8


class FormatError(ValueError):
    """A format the user asked for cannot exist (bits out of range, bad group size)."""


@dataclass(frozen=True, order=True)
class Format:
    """One candidate: weight bits, group size along the reduction dim (None = per output
    channel), symmetric or not. ``bits == 16`` is the float format (other fields ignored).

    ``runtime`` names a runtime's own format instead (``q4_K``, ``nvfp4``, …; see
    search/runtime_formats.py): its numerics and storage are that runtime's, and bits, group size
    and symmetry are filled in from it (element bits, block, no min/offset) for the parts of the
    engine that order or price formats by them. Build one with ``Format.named``."""

    bits: int
    group_size: int | None = 64
    symmetric: bool = False
    runtime: str = ""

    @classmethod
    def named(cls, name: str) -> "Format":
        """A runtime format by name, or the float format for ``f16``."""
        if name == rf.FLOAT:
            return cls(FLOAT_BITS)
        f = rf.get(name)
        return cls(f.bits, f.block, f.symmetric, f.name)

    def __post_init__(self) -> None:
        if self.runtime:
            f = rf.get(self.runtime)
            if (self.bits, self.group_size, self.symmetric) != (f.bits, f.block, f.symmetric):
                raise FormatError(f"{self.runtime} is {f.bits}-bit, block {f.block}, symmetric={f.symmetric}: "
                                  "build it with Format.named")
            return
        if self.bits != FLOAT_BITS and not MIN_BITS <= self.bits <= MAX_BITS:
            raise FormatError(f"bits={self.bits} is not supported: use {MIN_BITS}..{MAX_BITS} or {FLOAT_BITS} (float)")
        if self.is_float:
            object.__setattr__(self, "group_size", None)
            object.__setattr__(self, "symmetric", False)
        elif self.group_size is not None and (self.group_size < 1 or self.group_size > 1 << 20):
            raise FormatError(f"group_size={self.group_size} is invalid: use a positive size such as 32, 64, 128 or per-channel")

    @property
    def is_float(self) -> bool:
        return self.bits == FLOAT_BITS

    @property
    def label(self) -> str:
        """Short stable name, e.g. ``w4g64a`` (asymmetric), ``w3pcs`` (per-channel symmetric), ``fp16``."""
        if self.is_float:
            return "fp16"
        if self.runtime:
            return self.runtime
        g = f"g{self.group_size}" if self.group_size else "pc"
        return f"w{self.bits}{g}{'s' if self.symmetric else 'a'}"

    def to_dict(self) -> dict:
        d = {"bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric}
        return {**d, "runtime": self.runtime} if self.runtime else d

    @classmethod
    def from_dict(cls, d: dict) -> "Format":
        if d.get("runtime"):
            return cls.named(d["runtime"])
        return cls(int(d["bits"]), d.get("group_size"), bool(d.get("symmetric", False)))

    def stored_as(self, in_features: int) -> "Format":
        """The format a layer whose rows hold ``in_features`` weights is really stored in:
        itself, or llama.cpp's fallback type for a GGUF block that does not divide the row."""
        if not self.runtime:
            return self
        return Format.named(rf.effective(self.runtime, in_features))


def n_groups(numel: int, in_features: int, group_size: int | None) -> int:
    """Number of scale groups of a weight with ``numel`` elements whose reduction dim is
    ``in_features``. A last partial group still needs its own scale."""
    rows = numel // in_features
    if group_size is None:
        return rows
    return rows * math.ceil(in_features / group_size)


def storage_bits(fmt: Format, numel: int, in_features: int) -> int:
    """Exact storage of one layer in ``fmt``, in bits, scales and zero points included."""
    if fmt.is_float:
        return numel * FLOAT_BITS
    if fmt.runtime:
        return rf.storage_bits(fmt.runtime, numel, in_features)
    per_group = SCALE_BITS + (0 if fmt.symmetric else fmt.bits)
    return numel * fmt.bits + n_groups(numel, in_features, fmt.group_size) * per_group


def make_formats(bits: list[int], group_size: int | None | list[int | None] = 64, symmetric: bool = False) -> list[Format]:
    """The candidate list of a job: every bit-width × every group size (one or several; None =
    per channel), shared symmetry. Duplicates are dropped and the order is by bits then group
    size, so a table's columns are stable."""
    if not bits:
        raise FormatError("no formats: give at least one bit-width, e.g. --bits 2,3,4,8")
    groups = group_size if isinstance(group_size, list) else [group_size]
    if not groups:
        raise FormatError("no group size: give one or more, e.g. --group-size 64 or 32,64,128")
    fmts = {Format(int(b), g, symmetric) for b in bits for g in groups}
    return sorted(fmts, key=lambda f: (f.bits, f.group_size or 1 << 30))


_INT_LABEL = re.compile(r"^w([2-8])(?:g(\d+)|pc)([as])$")
FLOAT_NAMES = ("fp16", "f16", "bf16", "float")


def parse_format(text: str) -> Format:
    """A format by its label: a runtime's name (``q4_K``, ``nvfp4``), an integer format
    (``w4g128s``: 4-bit, groups of 128, symmetric; ``w8pca``: per channel, asymmetric) or float."""
    t = text.strip()
    if t in FLOAT_NAMES:
        return Format(FLOAT_BITS)
    if t in rf.RUNTIME_FORMATS:
        return Format.named(t)
    m = _INT_LABEL.match(t)
    if m is None:
        raise FormatError(f"unknown format {t!r}: use a runtime format ({', '.join(rf.RUNTIME_FORMATS)}), an integer "
                          "format like w4g128s / w8pca (bits, group or pc, s = symmetric / a = asymmetric), or f16")
    return Format(int(m.group(1)), int(m.group(2)) if m.group(2) else None, m.group(3) == "s")


def parse_formats(names: list[str]) -> list[Format]:
    """A job's explicit menu, deduplicated and ordered by bits then block, as make_formats orders."""
    if not names:
        raise FormatError("no formats: give at least one, e.g. --formats q3_K,q4_K,q6_K")
    fmts = {parse_format(n) for n in names}
    return sorted(fmts, key=lambda f: (f.bits, f.group_size or 1 << 30, f.symmetric, f.runtime))
