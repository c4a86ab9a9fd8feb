"""Pydantic schemas shared by the server and the SDK (the API's wire format).

Only pydantic here: the SDK imports this module on laptops that have no torch, Ray, SQLAlchemy
or FastAPI. Field names follow DESIGN §2 (model, job, phase, budget, sensitivity, policy).
Engine-level validation (budget ranges, proxy/solver names) happens on the server, which turns
these requests into a ``search.spec.SearchSpec``."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from search.targets import TARGETS
from search.defaults import (DEFAULT_BITS, DEFAULT_GROUP_SIZES, DEFAULT_REFINE_EVALS, DEFAULT_REFINE_PATIENCE,
                             DEFAULT_REFINE_SECONDS,
                             DEVICE_PATTERN, PHASES, REFINE_SECONDS)
from service.jobstate import TERMINAL, TRANSITIONS, JobStatus  # noqa: F401  (TERMINAL: the SDK's name)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    """Every non-2xx response: a stable ``code``, a ``message`` that says what to change, and
    optional ``detail`` (e.g. the offending field)."""
    code: str
    message: str
    detail: Any = None


TargetName = Literal.__getitem__(tuple(TARGETS))  # search/targets.py's registry


class ModelCreate(_Strict):
    """Register by reference: ``builtin:minilm-l6``, ``builtin:smollm2-135m``,
    ``builtin:digits-cnn``, or ``hf:<dir>``, ``export:<file.pt2>``, ``torchscript:<file>`` under
    the server's BITPLAN_MODEL_ROOT. torch.export programs (``.pt2``) and TorchScript archives
    are uploaded as multipart ``file`` to the same endpoint."""
    ref: str = Field(min_length=1, max_length=1024)


class ModelOut(BaseModel):
    id: str = Field(description="sha256 of the model's weights")
    ref: str
    kind: str
    metric: str
    n_layers: int
    n_weights: int
    created_at: datetime


class Formats(_Strict):
    """The candidate menu: bit-widths × group sizes of bitplan's integer grid, or ``names``: an
    explicit menu of runtime formats and integer labels (q4_K, nvfp4, fp8_pc, w4g128s, f16; GET
    /v1/meta lists them). With a ``target`` and neither ``bits`` nor ``names``, the target's menu."""
    bits: list[int] | None = Field(default=None, max_length=16, description=f"null: {list(DEFAULT_BITS)} (or the target's menu)")
    group_size: int | None | list[int | None] = Field(default_factory=lambda: list(DEFAULT_GROUP_SIZES))
    symmetric: bool = False
    names: list[Annotated[str, Field(min_length=1, max_length=32)]] | None = Field(default=None, max_length=64, description=(
        "an explicit menu by name instead of bits × group sizes"))


class Data(_Strict):
    """Calibration or evaluation data: a builtin corpus name (``wikitext2-valid``,
    ``wikitext2-test``, ``tinyshakespeare``, ``pydoc``, ``digits``), uploaded data
    (``upload:<id>`` from POST /v1/data: images, tensors, text or JSONL), a server-side path under
    BITPLAN_MODEL_ROOT (``images:<dir>``, ``tensors:<file>``, ``text:<file>``, ``jsonl:<file>``,
    ``dataset:<dir>``), or inline ``text`` (paragraphs separated by blank lines).
    ``n_samples``/``seq_len`` override the model's defaults."""
    source: str | None = Field(default=None, max_length=1024)
    text: str | None = Field(default=None, max_length=4_000_000)
    n_samples: int | None = Field(default=None, ge=1, le=4096)
    seq_len: int | None = Field(default=None, ge=1, le=32_768)


class JobCreate(_Strict):
    model_id: str = Field(min_length=1, max_length=128)
    budgets: dict[str, float] | list[dict[str, float]] = Field(
        description="one budget (constraints on avg_bits, size_bytes, bops, latency_ms that must all hold) or a "
                    "list of them: one policy per budget, all from one sensitivity table")
    formats: Formats = Field(default_factory=Formats)
    proxy: str | None = Field(default=None, max_length=64, description="null = bitplan's recipe: fisher + loop for causal LMs, measured + moves otherwise")
    proxy_params: dict[str, Any] = Field(default_factory=dict)
    solver: str | None = Field(default=None, max_length=64, description="null = bitplan's recipe (ilp)")
    solver_params: dict[str, Any] = Field(default_factory=dict, description="parameters of the 'joint' solver")
    refine: bool | None = None
    refine_evals: int = Field(default=DEFAULT_REFINE_EVALS, ge=1, le=10_000)
    refine_patience: int = Field(default=DEFAULT_REFINE_PATIENCE, ge=1, le=10_000, description=(
        "refine also stops once this many candidates in a row since the last accepted move did not improve "
        "(set it to refine_evals to judge every candidate the budget allows)"))
    refine_seconds: float | None = Field(default=None, gt=0, le=7 * 86400, description=(
        "wall time refine may spend (checked between candidates); it stops at whichever of this and "
        "refine_evals comes first, and the policy's refine.stopped_by says which (null: "
        + ", ".join(f"{v:g} for a {k}" for k, v in REFINE_SECONDS.items()) + f", {DEFAULT_REFINE_SECONDS:g} otherwise)"))
    compute_dtype: Literal["auto", "float32", "bfloat16"] = Field(default="auto", description=(
        "dtype of the comparison passes (the measured proxy's cells and refine's judge): auto = bfloat16 where the "
        "worker's device multiplies it natively (AVX512-BF16/AMX CPUs, bf16 GPUs), else float32; held-out metrics "
        "are float32 either way. The table's params and the policy's refine report name the one used"))
    refine_method: Literal["moves", "loop"] | None = Field(default=None, description=(
        "moves: pairs of one-step moves judged one by one; loop: measure the cells around the policy at the "
        "operating point (the dearest uniform format that fits), re-solve and judge, then moves with the time "
        "left; null: the recipe's (loop for causal LMs, moves otherwise)"))
    judge_samples: int | None = Field(default=None, ge=0, le=65_536, description=(
        "samples of the calibration source, apart from the calibration ones, that judge refine's moves "
        "(null: the model's default; 0: judge on the calibration samples)"))
    calibration: Data = Field(default_factory=Data)
    evaluation: Data = Field(default_factory=Data)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    ties: list[str] = Field(default_factory=list, max_length=8)
    runtime: str | None = Field(default=None, max_length=32, description="vllm/sglang: tie q/k/v, gate/up and the experts of each MoE block")
    target: TargetName | None = Field(default=None, description=(
        "the runtime the policy is for: its legal format menu (the default menu when formats are not given), "
        "the layers it fuses (tied), its quantizer and exporter; a format it cannot serve is refused"))
    latency_table: dict[str, dict[str, float]] | None = None
    device: str = Field(default="auto", pattern=DEVICE_PATTERN, description=(
        "where the worker runs the forward passes: auto (the GPU Ray granted the job's task, else the CPU), "
        "cpu, cuda, cuda:N or mps; a device the worker lacks fails the job with the reason"))
    offload: bool | None = Field(default=None, description=(
        "stream the model's blocks through the accelerator one at a time (null: only when the weights do "
        "not fit its free memory)"))
    quantizer: Literal["rtn", "gptq"] = Field(default="rtn", description="the weight quantizer every measurement "
                                               "uses: rtn (round to nearest) or gptq (error-compensating)")
    quantizer_params: dict[str, Any] = Field(default_factory=dict, description="gptq: damp, act_order, block_size, n_samples (Hessian samples, apart from the calibration samples)")
    image_size: int | None = Field(default=None, ge=8, le=4096, description=(
        "image models: the square input size images are center-cropped to (null: from the HF processor config "
        "or the model's declared input)"))
    resize: int | None = Field(default=None, ge=8, le=8192, description=(
        "image models: resize the shorter side to this before the crop (null: round(image_size / 0.875))"))
    image_mean: list[float] | None = Field(default=None, min_length=1, max_length=3, description=(
        "image models: per-channel mean in [0, 1] pixel units (torchvision's convention), 1 or 3 values, "
        "e.g. [0.485, 0.456, 0.406]"))
    image_std: list[Annotated[float, Field(gt=0)]] | None = Field(default=None, min_length=1, max_length=3, description=(
        "image models: per-channel standard deviation in [0, 1] pixel units, 1 or 3 positive values, "
        "e.g. [0.229, 0.224, 0.225]"))
    data_column: str | None = Field(default=None, min_length=1, max_length=128, description=(
        "dataset:<dir> sources: the input column (null: image/img/pixel_values/text)"))
    label_column: str | None = Field(default=None, min_length=1, max_length=128, description=(
        "dataset:<dir> sources: the label column (null: label/labels; labels are optional)"))
    fold_batchnorm: bool = Field(default=False, description=(
        "fold each BatchNorm into the conv before it before quantizing (recorded in the policy)"))


class DataOut(BaseModel):
    """Uploaded calibration/evaluation data (POST /v1/data). Jobs name it by ``source``."""
    id: str = Field(description="sha256 of the uploaded bytes")
    kind: Literal["images", "tensors", "text", "jsonl"]
    samples: int = Field(description="images, tensor samples, text paragraphs or JSONL lines")
    classes: list[str] | None = Field(description="images in class/ subfolders: the class names (sorted); else null")
    bytes: int
    source: str = Field(description="what a job's calibration/evaluation source names: upload:<id>")
    name: str | None = Field(default=None, description="the uploaded file's name")
    created_at: datetime | None = None


class JobEvent(BaseModel):
    seq: int
    at: datetime
    status: str
    phase: str | None
    progress: float
    message: str


class JobOut(BaseModel):
    id: str
    model_id: str
    status: JobStatus
    phase: str | None
    progress: float = Field(description="0..1 over all phases")
    message: str
    request: JobCreate
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    timings: dict[str, float]
    error: str | None
    attempts: int
    sensitivity_id: str | None
    sensitivity_cached: bool
    policy_ids: list[str]


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(description="pass as ?cursor= to get the next page; null at the end")


class PolicySummary(BaseModel):
    id: str
    job_id: str
    model_id: str
    budget: dict[str, float]
    cost: dict[str, float | None]
    metric: str | None
    value: float | None
    created_at: datetime


class SensitivitySummary(BaseModel):
    id: str
    key: str
    model_id: str
    proxy: str
    created_at: datetime


class HealthOut(BaseModel):
    """``GET /healthz``: the process answers (it never touches the database)."""
    status: Literal["ok"]


class ReadyOut(BaseModel):
    """``GET /readyz``: 200 when every check is ``ok``, 503 otherwise. ``checks`` maps what was
    checked (database, ray, corpora, packages, each builtin model) to ``ok`` or what is missing."""
    status: Literal["ready", "not ready"]
    checks: dict[str, str]


class FormatMenuMeta(BaseModel):
    """The format menu as the server defines it (DESIGN §2)."""
    default: Formats = Field(description="the menu of a job that gives no ``formats``")
    min_bits: int = Field(description="the fewest weight bits a format may have")
    max_bits: int = Field(description="the most weight bits a quantized format may have")
    float_bits: int = Field(description="``bits`` of a layer kept in float (a format of its own)")
    reference_group_size: int = Field(description="group size of the uniform baselines (the reference format), "
                                                  "when the job's menu has it")
    runtime: dict[str, dict] = Field(default_factory=dict, description="runtime formats by name (GGUF types, "
                                     "NVFP4/MX/FP8): family, element bits, block, bits per weight, llama.cpp's fallback")
    targets: dict[str, dict] = Field(default_factory=dict, description="deployment targets: default menu, tied "
                                     "fused layers, exporters, quantizers")


class RecipeStep(BaseModel):
    proxy: str
    refine_method: str


class RecipeMeta(BaseModel):
    """What a job that names no proxy and no solver runs."""
    by_kind: dict[str, RecipeStep] = Field(description="model kinds with a recipe of their own")
    default: RecipeStep = Field(description="every other model kind")
    solver: str = Field(description="the solver of a job that names none")


class MetaOut(BaseModel):
    """The server's own definitions, so clients (the dashboard) never restate them. Fields after
    ``phases`` were added later: an older server leaves them at their empty defaults."""
    job_statuses: dict[str, JobStatus] = Field(description="every job status, by name")
    terminal: list[JobStatus] = Field(description="statuses a job never leaves")
    transitions: dict[JobStatus, list[JobStatus]] = Field(description="the statuses each status may move to")
    phases: list[str] = Field(description="a job's phases, in order")
    formats: FormatMenuMeta | None = Field(default=None, description="the format menu's defaults and bounds")
    budget_metrics: list[str] = Field(default_factory=list, description="what a budget may constrain")
    exporters: list[str] = Field(default_factory=list, description="every registered export format "
                                 "(GET /v1/policies/{id}/export?format=…)")
    exporter_kinds: dict[str, str] = Field(default_factory=dict, description="what each export format hands over: a "
                                           "config the runtime's own tool applies, or the quantized files (artifact)")
    builtin_models: list[str] = Field(default_factory=list, description="references POST /v1/models accepts as is")
    data_sources: list[str] = Field(default_factory=list, description="builtin calibration/evaluation data sources")
    proxies: list[str] = Field(default_factory=list, description="registered sensitivity proxies")
    solvers: list[str] = Field(default_factory=list, description="registered solvers")
    quantizers: list[str] = Field(default_factory=list, description="weight quantizers; the first is the default")
    recipe: RecipeMeta | None = Field(default=None, description="what a job that names no proxy and no solver runs")


def meta() -> MetaOut:
    return MetaOut(job_statuses={s.name: s for s in JobStatus}, terminal=list(TERMINAL),
                   transitions={s: sorted(t) for s, t in TRANSITIONS.items()}, phases=list(PHASES))


class FormatChoice(_Strict):
    """One format (DESIGN §2): ``bits`` 2..8, or 16 = kept in float; ``group_size`` null = one
    scale per output channel; or ``runtime``, a runtime's own format (q4_K, nvfp4, fp8_pc, …),
    whose bits and block are its own (the other fields are then ignored)."""
    bits: int
    group_size: int | None
    symmetric: bool = False
    runtime: str | None = Field(default=None, max_length=32)


class LayerChoice(FormatChoice):
    name: str = Field(min_length=1, max_length=1024)
    stored_as: str | None = Field(default=None, max_length=32, description="as a policy states it; the server "
                                  "derives the stored type itself")
    numel: int | None = Field(default=None, ge=1, description="when given, checked against the registered layer, "
                                                              "so a policy's ``layers`` can be sent as they are")


MAX_COST_FORMATS = 256  # distinct formats one /v1/cost request may price (a job's menu can exceed 64)


class CostRequest(_Strict):
    """``POST /v1/cost``: price a layer → format choice on a registered model, and uniform
    policies in given formats, with the server's cost model."""
    model_id: str = Field(min_length=1, max_length=128)
    layers: list[LayerChoice] = Field(default_factory=list, max_length=100_000, description=(
        "layer → format as in a policy: layers absent stay in float"))
    formats: list[FormatChoice] = Field(default_factory=list, max_length=MAX_COST_FORMATS, description=(
        "formats to price as uniform policies (every layer in that format)"))


class FormatCost(BaseModel):
    bits: int
    group_size: int | None
    symmetric: bool
    runtime: str | None = None
    label: str = Field(description="the format's short name, e.g. w4g64a, w3pcs (symmetric, per channel), fp16")
    cost: dict[str, float] = Field(description="the uniform policy in this format, under every budget metric")


class CostOut(BaseModel):
    """Costs under every budget metric: ``avg_bits`` (bits per weight over the quantizable
    layers, scales and zero points included), ``size_bytes``, ``bops`` (Σ macs·w_bits·a_bits per
    sample or token, 16-bit activations)."""
    model_id: str
    n_layers: int = Field(description="quantizable layers of the model")
    n_weights: int = Field(description="weights in the quantizable layers: avg_bits' denominator")
    cost: dict[str, float] = Field(description="the cost of ``layers`` (the others in float)")
    formats: list[FormatCost] = Field(description="one per requested format, in the order asked")


class SolveRequest(_Strict):
    """``POST /v1/sensitivities/{id}/solve``: a new budget on a stored sensitivity table, solved
    without a job (nothing is stored)."""
    budgets: dict[str, Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        min_length=1, max_length=8, description="one budget: limits on avg_bits, size_bytes, bops, latency_ms "
                                                "that must all hold, e.g. {\"avg_bits\": 3.8}")
    solver: str = Field(default="ilp", min_length=1, max_length=64, description=(
        "a solver of a sensitivity table: ilp (exact, the default), lp, convex or pareto (GET /v1/meta lists the "
        "registry; joint measures the model and needs a job)"))
    ties: list[Annotated[str, Field(min_length=1, max_length=32)]] = Field(default_factory=list, max_length=8, description=(
        "tie presets whose layers must share a format: qkv, gate_up, experts (as a job's ties)"))
    runtime: str | None = Field(default=None, max_length=32, description=(
        "vllm/sglang: tie q/k/v, gate/up and the experts of each MoE block (as a job's runtime)"))
    latency_table: dict[str, dict[str, float]] | None = Field(default=None, description=(
        "layer name → format label (or bits, or 'float') → ms; needed by a latency_ms budget"))


class SolveOut(BaseModel):
    """The policy a solver finds on a stored sensitivity table for one budget."""
    table_id: str
    model_id: str
    solver: str
    budgets: dict[str, float] = Field(description="the budget solved for")
    layers: dict[str, str] = Field(description="layer name → format label (w4g64a, q4_K, fp16, …), in model order")
    cost: dict[str, float] = Field(description="the policy's cost under every budget metric the table can price "
                                               "(avg_bits, size_bytes, bops; latency_ms with a latency_table)")
    objective: float = Field(description="the predicted loss increase: the sum of the table's values at the chosen "
                                         "formats, in the proxy's unit")
    lower_bound: float | None = Field(description="a proven lower bound on the best objective (null: the solver gives none)")
    gap: float | None = Field(description="(objective - lower_bound) / |objective|; 0 = proven optimal")
    tied: list[list[str]] = Field(description="the groups of layers that were tied to one format")
    solve_ms: float = Field(description="the solver's own time")
    server_ms: float = Field(description="the time the server spent on the request (also in Server-Timing)")
    cached: bool = Field(description="whether the parsed table came from the server's in-process cache")
