"""The search job specification: data, versioned, validated before any work starts (search/
validate.py), and the one mapping from a job request in the API's names to specs. Shared by the
CLI, the service and the pipeline."""
from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from search.budgets import METRICS
from search.defaults import DEFAULT_BITS, DEFAULT_GROUP_SIZES, REFERENCE_GROUP  # noqa: F401  (re-exported)
from search.defaults import (DEFAULT_RECIPE, DEFAULT_REFINE_EVALS, DEFAULT_REFINE_PATIENCE, DEFAULT_REFINE_SECONDS, RECIPES,
                             REFINE_SECONDS)
from search.defaults import DEVICE_PATTERN as DEVICE_PATTERN_TEXT
from search.formats import FLOAT_BITS, MAX_BITS, MIN_BITS, make_formats, parse_formats
from search.layers import runtime_ties
from search.targets import get_target

DEVICE_PATTERN = re.compile(DEVICE_PATTERN_TEXT)
DEFAULT_PROXY = DEFAULT_RECIPE[0]  # bitplan's recipe: measured sensitivities,
DEFAULT_SOLVER = "ilp"             # exact allocation with a certificate,
# then refinement judged by measured loss on samples held apart from the table's (search/defaults.py)


class SearchSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    model: str
    budgets: dict[str, float]
    bits: list[int] | None = None  # None: DEFAULT_BITS, or the target's menu
    group_size: int | None | list[int | None] = Field(default_factory=lambda: list(DEFAULT_GROUP_SIZES))
    symmetric: bool = False
    # an explicit menu by label (runtime names such as q4_K / nvfp4, integer labels such as
    # w4g128s, f16) instead of bits × group sizes; None: the target's menu, else bits × groups
    format_names: list[str] | None = None
    # the runtime the policy is for (search/targets.py): its legal menu, its fused-layer ties,
    # its quantizer and its exporter
    target: str | None = None
    proxy: str | None = None
    proxy_params: dict = Field(default_factory=dict)
    solver: str | None = None
    solver_params: dict = Field(default_factory=dict)
    refine: bool | None = None
    refine_evals: int = DEFAULT_REFINE_EVALS
    refine_patience: int = DEFAULT_REFINE_PATIENCE  # stop after this many losing candidates in a row
    refine_seconds: float | None = None  # None: the model kind's (search.defaults.REFINE_SECONDS)
    # how refine searches: "moves" (pairs of one-step moves judged one by one) or "loop" (the
    # operating-point loop of search/local.py first, then moves on its local table with the time left)
    refine_method: Literal["moves", "loop"] | None = None  # None: the recipe's (search.defaults.RECIPES)
    # refine's judge: samples of the calibration source apart from the calibration ones (None:
    # the per-model default; 0: judge on the calibration batches themselves)
    judge_samples: int | None = None
    # the dtype of the comparison passes (the measured proxy's cells, refine's judge): "auto" is
    # bf16 where the device multiplies it natively, else float32 (proxies/precision.py); held-out
    # metrics and calibration references are float32 whatever this says
    compute_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    calib: str | None = None
    eval: str | None = None
    n_calib: int | None = None
    n_eval: int | None = None
    seq_len: int | None = None
    seed: int = 0
    ties: list[str] = Field(default_factory=list)
    include_embeddings: bool = False
    include_head: bool = False
    latency_table: dict[str, dict[str, float]] | None = None
    a_bits: int = 16
    # the weight quantizer every proxy, evaluation and refine use: rtn (DESIGN §3) or gptq
    quantizer: str = "rtn"
    quantizer_params: dict = Field(default_factory=dict)
    # image preprocessing (torchvision's convention: pixels in [0, 1], then (x − mean) / std):
    # resize the shorter side to ``resize`` (default image_size / 0.875), center-crop
    # ``image_size``; unset values come from the HF processor config or the model's declared input
    image_size: int | None = None
    resize: int | None = None
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    # a Hugging Face dataset saved to disk (``dataset:DIR``): the input column and the optional
    # label column (unset: the usual names, e.g. image/img/text and label/labels)
    data_column: str | None = None
    label_column: str | None = None
    # fold each BatchNorm into the conv before it, so the quantized weight is the one a deployed
    # (folded) model runs; the folds are recorded in the policy
    fold_batchnorm: bool = False
    # where the forward passes run: auto (the GPU Ray granted the task, else the CPU), cpu, cuda,
    # cuda:N, mps; ``offload`` streams the trunk's blocks through the device one at a time
    # (None: only when the weights do not fit its free memory)
    device: str = "auto"
    offload: bool | None = None

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("give at least one budget, e.g. avg_bits=3.3")
        for k, x in v.items():
            if k not in METRICS:
                raise ValueError(f"unknown budget metric {k!r}: use one of {', '.join(METRICS)}")
            if not x > 0:
                raise ValueError(f"budget {k}={x} must be positive")
        return v

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return None
        if not v:
            raise ValueError("give at least one bit-width, e.g. 2,3,4,8")
        bad = [b for b in v if b != FLOAT_BITS and not MIN_BITS <= b <= MAX_BITS]
        if bad:
            raise ValueError(f"{bad[0]} is not supported: use {MIN_BITS}..{MAX_BITS} or {FLOAT_BITS} (float)")
        return sorted(set(v))

    @field_validator("group_size")
    @classmethod
    def _group(cls, v):
        for g in v if isinstance(v, list) else [v]:
            if g is not None and not 1 <= g <= 1 << 16:
                raise ValueError(f"group_size {g} must be between 1 and 65536 (or per-channel)")
        if isinstance(v, list) and not v:
            raise ValueError("give at least one group size")
        return v

    @model_validator(mode="after")
    def _rest(self) -> "SearchSpec":
        if self.refine_evals < 1:
            raise ValueError("refine_evals must be >= 1")
        if self.refine_patience < 1:
            raise ValueError("refine_patience must be >= 1 (set it to refine_evals to judge every candidate)")
        if self.refine_seconds is not None and not 0 < self.refine_seconds <= 7 * 86400:
            raise ValueError(f"refine_seconds {self.refine_seconds} must be > 0 and at most a week (604800)")
        if self.judge_samples is not None and self.judge_samples < 0:
            raise ValueError("judge_samples must be >= 0 (0 judges refine on the calibration batches)")
        if self.image_size is not None and not 8 <= self.image_size <= 4096:
            raise ValueError(f"image_size {self.image_size} must be between 8 and 4096 pixels")
        if self.resize is not None and not (self.image_size or 8) <= self.resize <= 8192:
            raise ValueError(f"resize {self.resize} must be at least image_size and at most 8192 pixels")
        for name in ("image_mean", "image_std"):
            v = getattr(self, name)
            if v is not None and len(v) not in (1, 3):
                raise ValueError(f"{name} needs 1 or 3 values (one per channel), got {len(v)}")
        if self.image_std is not None and any(not x > 0 for x in self.image_std):
            raise ValueError("image_std values must be positive")
        if not DEVICE_PATTERN.match(self.device.strip().lower()):
            raise ValueError(f"device {self.device!r} is not one of auto, cpu, cuda, cuda:N, mps")
        if "latency_ms" in self.budgets and not self.latency_table:
            raise ValueError("a latency_ms budget needs a per-layer latency table")
        if self.format_names is not None and self.bits is not None:
            raise ValueError("give the menu either as formats (e.g. q3_K,q4_K,q6_K) or as bits (with group sizes), "
                             "not both")
        if self.target is not None:
            target = get_target(self.target)
            missing = [t for t in target.ties if t not in self.ties]
            if missing:  # the runtime fuses these siblings: every consumer of the spec sees the ties
                self.ties = sorted(set(self.ties) | set(missing))
        return self

    def menu(self) -> list:
        """The job's candidate formats: the explicit list, else the target's menu, else every
        bit-width × group size. A target's legality is checked in search.validate."""
        if self.format_names is not None:
            return parse_formats(self.format_names)
        if self.target is not None and self.bits is None:
            return get_target(self.target).menu_formats()
        return make_formats(self.bits or list(DEFAULT_BITS), self.group_size, self.symmetric)

    @property
    def proxy_name(self) -> str:
        return self.proxy or DEFAULT_PROXY

    @property
    def solver_name(self) -> str:
        return self.solver or DEFAULT_SOLVER

    def with_recipe(self, kind: str) -> "SearchSpec":
        """The spec with the recipe of its model kind filled in (search.defaults.RECIPES): the
        proxy and refine method when the job names no proxy, no solver and no proxy parameters,
        else only the refine method (moves unless asked). Applied where the kind is known (the
        API at submission, the pipeline after loading), so the table key names the real proxy."""
        proxy, method = RECIPES.get(kind, DEFAULT_RECIPE)
        seconds = self.refine_seconds or REFINE_SECONDS.get(kind, DEFAULT_REFINE_SECONDS)
        if self.proxy is None and self.solver is None and not self.proxy_params:
            return self.model_copy(update={"proxy": proxy, "refine": True if self.refine is None else self.refine,
                                           "refine_method": self.refine_method or method, "refine_seconds": seconds})
        return self.model_copy(update={"refine_method": self.refine_method or "moves", "refine_seconds": seconds})

    @property
    def do_refine(self) -> bool:
        return self.refine if self.refine is not None else (self.proxy is None and self.solver is None)


# Where a job request (the API's JSON, ``service.schemas.JobCreate``) and a spec name a value
# differently: the request nests the format menu and each data set, the spec keeps them flat.
# Every other field has one name on both sides (model, budgets, proxy, solver, ties, quantizer, …)
# and is copied as it is.
REQUEST_NAMES: dict[tuple[str, str], str] = {
    ("formats", "bits"): "bits", ("formats", "group_size"): "group_size", ("formats", "symmetric"): "symmetric",
    ("formats", "names"): "format_names",
    ("calibration", "source"): "calib", ("calibration", "n_samples"): "n_calib", ("calibration", "seq_len"): "seq_len",
    ("evaluation", "source"): "eval", ("evaluation", "n_samples"): "n_eval", ("evaluation", "seq_len"): "seq_len",
}
# request fields that become no spec field of the same name: the registered model's id (a spec
# names the model's reference), the target runtime (it adds tie patterns), the nested groups above
NOT_SPEC_FIELDS = ("model_id", "runtime", "budgets", *sorted({group for group, _ in REQUEST_NAMES}))


def specs_from_request(request: dict, model: str, kind: str | None = None) -> list[SearchSpec]:
    """A job request in the API's names → one SearchSpec per budget point (``budgets`` is one
    budget or a list of them), with the recipe of the model ``kind`` when it is known.

    The one mapping from a request to specs: the API at submission, the dispatcher at launch and
    ``bitplan search`` (its flags written in the request's names) build their specs here.
    ``model`` is the model's reference; data sources must already be the worker-side ones; inline
    ``text`` is not a spec field (the worker writes it to a file source). A group's value absent
    from the request keeps the spec's default; ``seq_len`` is the calibration's, else the
    evaluation's. Raises pydantic's ValidationError (a ValueError) for a value the spec refuses."""
    fields = {k: v for k, v in request.items() if k not in NOT_SPEC_FIELDS}
    for (group, name), field in REQUEST_NAMES.items():
        part = request.get(group) or {}
        # null is a value only for group_size (per channel); elsewhere it means "not given"
        if name in part and (part[name] is not None or name == "group_size") and fields.get(field) is None:
            fields[field] = part[name]
    fields["ties"] = runtime_ties(request.get("runtime"), request.get("ties") or [])
    budgets = request["budgets"] if isinstance(request["budgets"], list) else [request["budgets"]]
    specs = [SearchSpec(**fields, model=model, budgets=b) for b in budgets]
    return [s.with_recipe(kind) for s in specs] if kind is not None else specs
