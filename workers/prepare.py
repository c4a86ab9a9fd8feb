"""One prepare step: load → plan → calibrate, for every caller (the pipeline, a Ray worker's
sensitivity chunks, ``bitplan evolve``, the benches).

``prepare(spec)`` loads the model, refuses what needs the model to be refused, picks the
quantizable layers, builds the calibration (and evaluation) batches and the job's weight
quantizer. Its value splits in two:

- the *data part* (model, plan, layers, formats, batches, quantizer) costs data passes and
  depends only on the spec fields of ``PREPARE_FIELDS`` (plus the weights' hash and whether
  evaluation batches were built): ``prepare_key`` is exactly that, and a ``PrepareCache`` may
  hand the data part of one spec to another spec with the same key;
- the *job part* (the recipe-filled spec, proxy, solver, tie groups, cost model, joint space)
  is cheap and depends on the fields of ``JOB_FIELDS``: it is rebuilt, with its checks, on every
  call, cached data part or not.

Every SearchSpec field is in exactly one of the two lists (tests/workers/test_prepare.py checks
it), so a field added to the spec must be classified before it can be cached wrongly."""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from proxies.base import Proxy
from proxies.device import model_device, place_model, resolve_device
from proxies.discovery import discover_layers
from proxies.quantizers import WeightQuantizer, build_quantizer, check_quantizer
from proxies.registry import get_proxy
from search.budgets import CostModel
from search.formats import FLOAT_BITS, Format
from search.layers import find_tie_groups
from search.policy import Preprocess
from search.spec import SearchSpec
from search.validate import Checked, check_spec_budgets, fit_menu, validate
from workers.batches import DataPlan, hessian_batches, plan_from_spec, prepared_batches
from workers.sources import LoadedModel, load_model, weights_sha256

Progress = Callable[[str, float, str], None]

# The spec fields the data part depends on: the model, the format menu (formats, quantizer
# scales), the data plan and batches, the layer selection, the quantizer and its Hessians, the
# BatchNorm folding and where the model is placed. ``version`` says how every field is read.
PREPARE_FIELDS = ("version", "model", "bits", "group_size", "symmetric", "format_names", "target", "calib", "eval", "n_calib", "n_eval",
                  "seq_len", "seed", "include_embeddings", "include_head", "quantizer", "quantizer_params",
                  "image_size", "resize", "image_mean", "image_std", "data_column", "label_column",
                  "fold_batchnorm", "device", "offload")
# The spec fields only the job part and the later phases read: budgets and the costs they are
# checked against (ties, a_bits, latency_table), the proxy, the solver, refine and its judge.
JOB_FIELDS = ("budgets", "proxy", "proxy_params", "solver", "solver_params", "refine", "refine_evals",
              "refine_patience", "refine_seconds", "refine_method", "judge_samples", "compute_dtype", "ties", "latency_table", "a_bits")


def _noop(phase: str, fraction: float, message: str) -> None:
    pass


def prepare_key(spec: SearchSpec, model_sha256: str = "", with_evals: bool = True) -> str:
    """The cache key of the data part: every ``PREPARE_FIELDS`` field, the loaded weights'
    sha256 (when known) and whether evaluation batches are built. A field missing here once
    served one job's formats to another job with another menu."""
    return json.dumps({"spec": {f: getattr(spec, f) for f in PREPARE_FIELDS}, "weights": model_sha256,
                       "with_evals": with_evals}, default=str, sort_keys=True)


def data_spec(model: str, **fields) -> SearchSpec:
    """A spec for callers that prepare a model without a job (``bitplan evolve``, the benches):
    the float model's cost as the budget (every policy fits) and the CPU, where they have always
    run, unless ``fields`` say otherwise."""
    return SearchSpec(**{"budgets": {"avg_bits": float(FLOAT_BITS)}, "device": "cpu", **fields, "model": model})


def validate_static(spec: SearchSpec, checked: Checked | None = None) -> tuple:
    """The proxy object, the registered solver (built from the spec's solver_params) and the
    formats. From ``checked`` when the caller validated the spec (``search.validate.validate``
    runs once per job: the API at submission, the CLI before torch loads); a spec handed over
    unchecked is validated here."""
    parts = (checked or validate(spec)).parts
    return get_proxy(spec.proxy_name, **spec.proxy_params), parts.solver, parts.formats


@dataclass
class Loaded:
    """The load phase's result: everything checked that needs the model but no data pass."""
    lm: LoadedModel
    plan: object
    layers: list
    modules: list
    ties: object
    costs: CostModel
    space: object
    folds: list = field(default_factory=list)
    placement: dict = field(default_factory=lambda: {"device": "cpu", "offload": False})

    @property
    def table_sha256(self) -> str:
        """The weights the sensitivity table is measured on: the model's identity, or the
        folded weights' hash when BatchNorms were folded (a table of the unfolded model must
        never serve a folded one)."""
        return self.lm.info.get("folded_sha256", self.lm.sha256) if self.folds else self.lm.sha256

    def preprocess(self) -> Preprocess:
        """What the policy records about the model and data before quantization."""
        p = self.plan
        data = {"calibration": p.calib, "evaluation": p.eval, "n_calib": p.n_calib, "n_eval": p.n_eval}
        if p.notes:
            data["notes"] = list(p.notes)
        return Preprocess(batchnorm_folded=self.folds, image=p.prep.to_dict() if p.prep is not None else None, data=data)


@dataclass
class Prepared:
    """A spec made ready for the phases after calibrate (see the module docstring for which
    part a cache may share between specs).

    Data part: ``loaded`` (model, plan, layers and modules, BatchNorm folds, placement),
    ``formats`` (the menu, the table's columns), ``calib`` (calibration batches with the task's
    targets), ``evals`` (held-out batches; empty when prepared with ``with_evals=False``),
    ``info`` (calibration source, samples, seq_len, seed, content sha256), ``quantizer`` (the
    job's weight quantizer on the float model). Job part: ``spec`` (with the model kind's recipe
    filled in), ``proxy``, ``solver`` (the registered solver, built from ``solver_params``) and
    ``loaded.ties``/``costs``/``space``. ``timings``: this call's seconds per phase."""
    loaded: Loaded
    formats: list[Format]
    calib: list[dict]
    evals: list[dict]
    info: dict
    quantizer: WeightQuantizer
    spec: SearchSpec
    proxy: Proxy
    solver: object
    timings: dict = field(default_factory=dict)

    @property
    def lm(self) -> LoadedModel:
        return self.loaded.lm

    @property
    def plan(self) -> DataPlan:
        return self.loaded.plan

    @property
    def layers(self) -> list:
        return self.loaded.layers

    @property
    def modules(self) -> list:
        return self.loaded.modules

    @property
    def table_sha256(self) -> str:
        return self.loaded.table_sha256


class PrepareCache:
    """A process's (a Ray worker's) last prepared value, under its ``prepare_key``, and its last
    loaded model under (reference, fold_batchnorm): a spec with another key on the same model
    reloads no weights (a model whose BatchNorms were folded is another model)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.key: str | None = None
        self.value: Prepared | None = None
        self.model_key: tuple | None = None
        self.lm: LoadedModel | None = None

    def model(self, spec: SearchSpec) -> LoadedModel:
        """The cached model of ``spec.model``, else a fresh load (which replaces it)."""
        key = (spec.model, spec.fold_batchnorm)
        if self.model_key != key or self.lm is None:
            self.model_key, self.lm = key, load_model(spec.model)
        return self.lm

    def get(self, key: str) -> Prepared | None:
        return self.value if self.key == key else None

    def put(self, key: str | None, value: Prepared | None) -> None:
        self.key, self.value = key, value


def prepare(spec: SearchSpec, progress: Progress = _noop, loaded: LoadedModel | None = None, *,
            with_evals: bool = True, cache: PrepareCache | None = None, checked: Checked | None = None) -> Prepared:
    """Load → plan → calibrate for ``spec``: every check that needs the model runs before the
    first data pass. ``loaded`` reuses a model the caller holds; ``with_evals=False`` builds no
    evaluation batches (a worker that never evaluates); with ``cache``, a data part prepared
    under the same ``prepare_key`` is reused and only the job part is rebuilt. The caller seeds
    torch (``torch.manual_seed``) where it wants the later phases seeded. ``checked``: the job's
    validation (``search.validate.validate``), so the spec is not validated again."""
    proxy, solver, formats = validate_static(spec, checked)
    t = time.perf_counter()
    progress("load", 0.0, spec.model)
    lm, key = loaded, None
    if cache is not None:
        lm = loaded or cache.model(spec)
        key = prepare_key(spec, lm.sha256, with_evals)
        if (hit := cache.get(key)) is not None:
            return _reused(hit, spec, proxy, solver, formats, progress, t)
        # the load below moves the shared model (placement, folds): a value cached before it
        # would describe a model that is no longer where it says, were this prepare to fail
        cache.put(None, None)
    ld = load_and_check(spec, proxy, solver, formats, lm)
    recipe, proxy = _recipe(spec, ld.lm.kind, proxy, solver, progress)
    timings = {"load": time.perf_counter() - t}
    _loaded_messages(ld, progress)

    t = time.perf_counter()
    plan, layers = ld.plan, ld.layers
    progress("calibrate", 0.0, f"{plan.calib} → calibration, {plan.eval} → evaluation")
    calib, evals, info = prepared_batches(ld.lm, plan, with_evals)
    if spec.quantizer != "rtn":
        progress("calibrate", 0.5, f"{spec.quantizer}: Hessians of {len(layers)} layers (samples apart from the calibration ones)")
    quantizer = job_quantizer(spec.quantizer, spec.quantizer_params, ld.lm, plan, layers, ld.modules, calib)
    timings["calibrate"] = time.perf_counter() - t
    progress("calibrate", 1.0, f"{info['samples']} calibration samples")
    out = Prepared(ld, formats, calib, evals, info, quantizer, recipe, proxy, solver, timings)
    if cache is not None:
        cache.put(key, out)
    return out


def _recipe(spec: SearchSpec, kind: str, proxy: Proxy, solver, progress: Progress) -> tuple[SearchSpec, Proxy]:
    """The spec with its model kind's recipe (proxy and refine method), and the recipe's proxy."""
    recipe = spec.with_recipe(kind)
    if recipe.proxy != spec.proxy:
        proxy = get_proxy(recipe.proxy_name, **recipe.proxy_params)
        progress("load", 0.95, f"recipe for a {kind}: {recipe.proxy} + {solver.name} + refine ({recipe.refine_method})")
    return recipe, proxy


def _loaded_messages(ld: Loaded, progress: Progress) -> None:
    folded = f", {len(ld.folds)} BatchNorms folded" if ld.folds else ""
    for note in ld.plan.notes:  # what was chosen for the user (hold-out size, labels, ...)
        progress("load", 0.9, note)
    where = f", on {ld.placement['device']}" + (" (blocks streamed one at a time)" if ld.placement.get("offload") else "")
    progress("load", 1.0, f"{len(ld.layers)} layers, {sum(l.numel for l in ld.layers):,} weights{folded}{where}")


def _reused(hit: Prepared, spec: SearchSpec, proxy: Proxy, solver, formats: list[Format], progress: Progress,
            t: float) -> Prepared:
    """A cached data part with this spec's job part: its checks run again (a budget outside the
    range is refused whatever was cached), no data pass."""
    ld = check_job(spec, hit.loaded, proxy, solver, formats)
    recipe, proxy = _recipe(spec, ld.lm.kind, proxy, solver, progress)
    progress("load", 1.0, f"{len(ld.layers)} layers: model, layers and calibration batches prepared before, reused")
    timings = {"load": time.perf_counter() - t, "calibrate": 0.0}
    return dataclasses.replace(hit, loaded=ld, spec=recipe, proxy=proxy, solver=solver, timings=timings)


def _needs_data(lm: LoadedModel, spec: SearchSpec) -> None:
    if lm.default_calib is None and spec.calib is None:
        raise ValueError(f"model {spec.model!r} has no default data: give calibration data, e.g. --calib images:DIR "
                         "(a folder of images, optionally class/ subfolders), tensors:FILE (.safetensors/.npz) or "
                         "dataset:DIR (an HF dataset saved to disk)")


def example_input(lm: LoadedModel, plan) -> torch.Tensor | None:
    """A one-sample zero input at the shape the data will have (else the model's declared
    shape): for conv MACs from real output sizes, the shape-fit check and BatchNorm folding."""
    if lm.kind != "classifier":
        return None
    shape = plan.input_shape or lm.input_shape
    return torch.zeros(1, *shape) if shape else None


def check_input_fits(lm: LoadedModel, x: torch.Tensor | None) -> None:
    """Run one forward at the data's input shape, so a model that cannot take it fails here,
    with the shape named, instead of deep inside the sensitivity phase."""
    if x is None:
        return
    try:
        with torch.no_grad():
            lm.task.logits(lm.model, {"x": x})
    except ValueError as e:  # GraphError and our own messages already say what to fix
        raise ValueError(f"model {lm.ref!r}: {e}") from None
    except Exception as e:  # noqa: BLE001 - any torch error here means the input does not fit
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ValueError(f"model {lm.ref!r} does not accept inputs of shape {tuple(x.shape[1:])} ({first}); "
                         "give the input size the model expects (--image-size, or tensors of that shape)") from None


def load_and_check(spec: SearchSpec, proxy, solver, formats, loaded: LoadedModel | None = None) -> Loaded:
    """Load the model and refuse what needs it to be refused (data plan and limits, input
    shape, no quantizable layers, proxy vs model size, budgets against the feasible range);
    fold BatchNorms when the spec asks."""
    lm = loaded or load_model(spec.model)
    if model_device(lm.model).type != "cpu":  # a cached model another job placed: checks run on the host
        place_model(lm.model, torch.device("cpu"), False)
    _needs_data(lm, spec)
    plan = plan_from_spec(lm, spec)
    x = example_input(lm, plan)
    check_input_fits(lm, x)
    folds = fold_model(lm, x) if spec.fold_batchnorm else []
    pairs = task_layers(lm, spec.include_embeddings, spec.include_head, x)
    if not pairs:
        raise ValueError(f"model {spec.model!r} has no quantizable layers (Linear, Conv1d/2d, HF Conv1D)")
    ld = Loaded(lm, plan, [p[0] for p in pairs], [p[1] for p in pairs], None, None, None, folds)
    ld = check_job(spec, ld, proxy, solver, formats)
    # last: everything above ran on the host; from here on the forward passes run on the device
    ld.placement = place_model(lm.model, resolve_device(spec.device), spec.offload)
    return ld


def check_job(spec: SearchSpec, ld: Loaded, proxy, solver, formats) -> Loaded:
    """The job part of the load phase on loaded layers: the proxy against the model size, tie
    groups, the cost model and the budgets against their feasible range (the joint space for the
    joint solver). No data pass; depends on ``JOB_FIELDS``, so it runs again on a cached value."""
    # the target's menu on these layers, in place: the caller's list is the job's menu from here on
    formats[:] = fit_menu(spec, formats, ld.layers)
    proxy.check_model(len(ld.layers), len(formats))
    ties = find_tie_groups(ld.layers, spec.ties)
    costs = CostModel(ld.layers, formats, spec.a_bits, spec.latency_table)
    space = check_spec_budgets(spec, costs, ties, solver)
    return dataclasses.replace(ld, ties=ties, costs=costs, space=space)


def fold_model(lm: LoadedModel, x: torch.Tensor | None) -> list[dict]:
    """Fold BatchNorms into the layers before them (in place, idempotent: a folded BN is the
    identity plus a shift, and folding it again changes nothing); the folded weights get their
    own hash for the table cache."""
    from workers.graphs import fold_batchnorm
    if x is None:
        raise ValueError("fold_batchnorm needs a model with image or tensor inputs (a classifier); this model has none")
    folds = fold_batchnorm(lm.model, x)
    lm.info["folded_sha256"] = weights_sha256(lm.model)
    return folds


def job_quantizer(name: str, params: dict, lm: LoadedModel, plan, layers, modules, calib) -> WeightQuantizer:
    """The job's weight quantizer, built on the float model. GPTQ reads its Hessians from
    calibration-source samples apart from ``calib`` (the batches that measure its results);
    only when the source has none left does it fall back to ``calib``, and says so."""
    full = check_quantizer(name, params)
    hb, disjoint = [], True
    if name != "rtn":
        hb, n = hessian_batches(lm, plan, full["n_samples"])
        hb, disjoint = (lm.task.prepare(lm.model, hb), True) if n else (calib, False)
    return build_quantizer(name, params, lm.model, modules, lm.task, hb, [l.name for l in layers], disjoint)


def task_layers(lm: LoadedModel, include_embeddings: bool = False, include_head: bool = False,
                x: torch.Tensor | None = None) -> list:
    """Quantizable layers that the task's output depends on, in model order. ``x`` (one sample
    at the data's input shape) gives conv MACs their real output sizes."""
    if x is None and lm.kind == "classifier" and lm.input_shape:
        x = torch.zeros(1, *lm.input_shape)
    example = None if x is None else (lambda model: lm.task.logits(model, {"x": x}))
    pairs = discover_layers(lm.model, example, include_embeddings, include_head)
    return [p for p in pairs if not p[0].name.startswith(lm.unused)]
