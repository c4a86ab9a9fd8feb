"""The canonical policy document, ``bitplan.policy/v1`` (DESIGN §2).

A policy must be readable by someone who has never seen bitplan: layer names are the model's
fully-qualified module names, layers absent from ``layers`` stay in float, and costs are given
under every budget metric with their units in the key names."""
from __future__ import annotations

import json
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer

from search import runtime_formats as rf
from search.formats import FLOAT_BITS, MAX_BITS, MIN_BITS, Format
from search.layers import LayerInfo

SCHEMA = "bitplan.policy/v1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelRef(_Strict):
    ref: str
    sha256: str = ""


class Quantizer(_Strict):
    """The quantizer the policy's measurements assume. GPTQ records its damping (relative to
    the mean Hessian diagonal) and act-order; act-order uses static groups, so the stored layout
    is plain contiguous groups either way. ``hessian_samples`` is how many calibration-source
    samples the Hessians read, ``hessian_disjoint`` whether they were apart from the samples that
    measured the policy. ``rtn_layers`` are layers GPTQ had no activations for (embeddings),
    quantized with RTN."""

    method: Literal["rtn", "gptq"] = "rtn"
    scale_dtype: Literal["float16"] = "float16"
    damp: float | None = None
    act_order: bool | None = None
    damp_raised_to: float | None = None
    hessian_samples: int | None = None
    hessian_disjoint: bool | None = None
    rtn_layers: list[str] | None = None

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler):
        # an RTN policy reads as DESIGN §2 shows it, without a row of nulls for GPTQ's fields
        return {k: v for k, v in handler(self).items() if v is not None}


class LayerFormat(_Strict):
    """One quantized layer. ``runtime`` names a runtime's own format (``q4_K``, ``nvfp4``; bits,
    group size and symmetry then restate its element bits and block); ``stored_as`` is the type a
    runtime really stores the layer in when it differs (llama.cpp's fallback for rows its block
    does not divide), which is what the costs and the measurements assumed."""
    name: str
    bits: int
    group_size: int | None = None
    symmetric: bool = False
    numel: int = Field(ge=1)
    runtime: str | None = None
    stored_as: str | None = None

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler):
        # an integer-format layer reads as DESIGN §2 shows it
        return {k: v for k, v in handler(self).items() if v is not None or k not in ("runtime", "stored_as")}

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: int) -> int:
        if not MIN_BITS <= v <= MAX_BITS:
            raise ValueError(f"bits must be {MIN_BITS}..{MAX_BITS} (float layers are left out of 'layers'), got {v}")
        return v

    @field_validator("runtime", "stored_as")
    @classmethod
    def _runtime(cls, v: str | None) -> str | None:
        if v is not None and v != "f16":
            rf.get(v)  # an unknown name raises with the list of known ones
        return v

    @property
    def format(self) -> Format:
        if self.runtime:
            return Format.named(self.runtime)
        return Format(self.bits, self.group_size, self.symmetric)


class Predicted(_Strict):
    """The table's prediction and how far it was from a measurement of the same thing: the
    calibration loss of the policy minus that of the table's reference point (the float model,
    or every layer in ``reference`` for a table measured at an operating point). A user reads
    ``measured_increase`` beside ``loss_increase`` to see how much to trust the table (in the
    measured proxy's units they are the same quantity; other proxies only rank)."""
    proxy: str
    loss_increase: float
    reference: str | None = None
    measured_increase: float | None = None

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler):
        return {k: v for k, v in handler(self).items() if v is not None}


class Measured(_Strict):
    metric: str
    value: float
    float: float
    uniform: dict[str, float] = Field(default_factory=dict)
    # avg_bits of each uniform baseline (same keys as ``uniform``), so a reader can place the
    # baselines on the same cost axis as the policy
    uniform_avg_bits: dict[str, float] = Field(default_factory=dict)
    split: str = "eval"
    extra: dict[str, float] = Field(default_factory=dict)


class Preprocess(_Strict):
    """What was done to the model and its inputs before quantization, so an exported model
    matches what was measured: BatchNorms folded into the layer before them (the folded weight
    is the one quantized), and how images were turned into tensors."""

    batchnorm_folded: list[dict[str, str]] = Field(default_factory=list)
    image: dict | None = None
    data: dict | None = None  # calibration/evaluation sources and sample counts


class SolverInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    objective: float | None = None
    lower_bound: float | None = None
    gap: float | None = None


class Policy(_Strict):
    """Layer → format plus cost, predicted and measured loss, and the solver's certificate."""

    schema_: Literal["bitplan.policy/v1"] = Field(SCHEMA, alias="schema")
    model: ModelRef
    quantizer: Quantizer = Quantizer()
    layers: list[LayerFormat]
    float_layers: list[str] = Field(default_factory=list)
    ties: list[list[str]] = Field(default_factory=list)
    budget: dict[str, float]
    cost: dict[str, float | None]
    predicted: Predicted | None = None
    measured: Measured | None = None
    solver: SolverInfo | None = None
    refine: dict | None = None
    # joint search (APQ): layer → unstructured magnitude-pruning ratio (absent = dense), and the
    # sparse storage format the costs assume
    sparsity: dict[str, float] = Field(default_factory=dict)
    sparse_format: str | None = None
    preprocess: Preprocess | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def to_json(self, indent: int | None = 2) -> str:
        return self.model_dump_json(by_alias=True, indent=indent, exclude_none=False)

    @classmethod
    def from_json(cls, text: str) -> "Policy":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not a {SCHEMA} document: it is not JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} document (schema={data.get('schema') if isinstance(data, dict) else None!r})")
        return cls.model_validate(data)

    def assignment(self) -> dict[str, Format]:
        """Layer name → format for the quantized layers (float layers are absent)."""
        return {l.name: l.format for l in self.layers}


def _stored_as(f: Format, layer: LayerInfo) -> str | None:
    eff = f.stored_as(layer.in_features)
    return None if eff == f else ("f16" if eff.is_float else eff.runtime)


def build_policy(model_ref: str, model_sha256: str, layers: list[LayerInfo], formats: list[Format],
                 choice: np.ndarray, budget: dict[str, float], cost: dict[str, float],
                 ties: list[list[str]] | None = None, **extra) -> Policy:
    """Assemble a policy from a solver's choice (format index per layer)."""
    chosen = [(l, formats[int(k)]) for l, k in zip(layers, choice)]
    return Policy(
        model=ModelRef(ref=model_ref, sha256=model_sha256),
        layers=[LayerFormat(name=l.name, bits=f.bits, group_size=f.group_size, symmetric=f.symmetric, numel=l.numel,
                            runtime=f.runtime or None, stored_as=_stored_as(f, l))
                for l, f in chosen if f.bits != FLOAT_BITS],
        float_layers=[l.name for l, f in chosen if f.bits == FLOAT_BITS],
        ties=ties or [], budget=budget, cost={**{"bops": None}, **cost}, **extra)
