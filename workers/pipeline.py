"""The search pipeline, phase by phase: load → calibrate → sensitivity → solve → evaluate →
refine. A plain function with a progress callback, so the CLI runs it in-process and the
service runs the same phases in Ray tasks. Everything a user can get wrong is checked before
the expensive phases start."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from proxies.base import Proxy, ProxyContext
from proxies.device import place_model, resolve_device
from proxies.measured import cell_measure
from proxies.discovery import discover_layers
from proxies.evaluate import Evaluator, RacingJudge
from proxies.quantizers import WeightQuantizer, build_quantizer, check_quantizer
from proxies.registry import get_proxy
from search.budgets import CostModel
from search.formats import FLOAT_BITS, Format
from search.layers import find_tie_groups
from search.policy import Measured, Policy, Predicted, Preprocess, Quantizer, SolverInfo, build_policy
from search.problem import Problem, Solution
from search.local import operating_point_loop
from search.refine import refine, uniform_check
from search.spec import REFERENCE_GROUP, SearchSpec
from search.validate import JOINT, check_spec_budgets, static_check
from search.table import SensitivityTable
from workers.batches import hessian_batches, judge_batches, plan_from_spec, prepared_batches
from workers.sources import LoadedModel, load_model, weights_sha256

PHASES = ("load", "calibrate", "sensitivity", "solve", "evaluate", "refine")
Progress = Callable[[str, float, str], None]


@dataclass
class SearchResult:
    policy: Policy
    table: SensitivityTable | None
    solution: Solution | None
    baselines: dict
    timings: dict = field(default_factory=dict)
    unrefined: dict | None = None


def _noop(phase: str, fraction: float, message: str) -> None:
    pass


def validate_static(spec: SearchSpec) -> tuple:
    """Checks that need no model (search.validate, torch-free), plus the proxy object. The joint
    solver (APQ) measures policies itself, so its "solver" is its parsed parameters."""
    checked = static_check(spec)
    return get_proxy(spec.proxy_name, **spec.proxy_params), checked.solver, checked.formats


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
    _needs_data(lm, spec)
    plan = plan_from_spec(lm, spec)
    x = example_input(lm, plan)
    check_input_fits(lm, x)
    folds = fold_model(lm, x) if spec.fold_batchnorm else []
    pairs = task_layers(lm, spec.include_embeddings, spec.include_head, x)
    if not pairs:
        raise ValueError(f"model {spec.model!r} has no quantizable layers (Linear, Conv1d/2d, HF Conv1D)")
    layers, modules = [p[0] for p in pairs], [p[1] for p in pairs]
    proxy.check_model(len(layers), len(formats))
    ties = find_tie_groups(layers, spec.ties)
    costs = CostModel(layers, formats, spec.a_bits, spec.latency_table)
    space = check_spec_budgets(spec, costs, ties, solver)
    # last: everything above ran on the host; from here on the forward passes run on the device
    placement = place_model(lm.model, resolve_device(spec.device), spec.offload)
    return Loaded(lm, plan, layers, modules, ties, costs, space, folds, placement)


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


def check_search(spec: SearchSpec) -> Loaded:
    """Every check ``run_search`` makes before its first data pass, and nothing more: what
    ``bitplan search --check`` runs (and the tests run on every documented example)."""
    proxy, solver, formats = validate_static(spec)
    return load_and_check(spec, proxy, solver, formats)


def run_search(spec: SearchSpec, progress: Progress = _noop, loaded: LoadedModel | None = None,
               table: SensitivityTable | None = None,
               compute_table: Callable[[Proxy, ProxyContext], SensitivityTable] | None = None) -> SearchResult:
    """Run every phase; ``loaded``/``table`` let a caller reuse a model or a cached table, and
    ``compute_table`` replaces the in-process sensitivity phase (the service fans it out over
    Ray tasks)."""
    torch.manual_seed(spec.seed)
    proxy, solver, formats = validate_static(spec)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    progress("load", 0.0, spec.model)
    ld = load_and_check(spec, proxy, solver, formats, loaded)
    lm, plan, layers, modules, ties, costs, space = ld.lm, ld.plan, ld.layers, ld.modules, ld.ties, ld.costs, ld.space
    recipe = spec.with_recipe(lm.kind)  # the model's kind is known now: its recipe's proxy and refine method
    if recipe.proxy != spec.proxy:
        proxy = get_proxy(recipe.proxy_name, **recipe.proxy_params)
        progress("load", 0.95, f"recipe for a {lm.kind}: {recipe.proxy} + {solver.name} + refine ({recipe.refine_method})")
    spec = recipe
    timings["load"] = time.perf_counter() - t
    folded = f", {len(ld.folds)} BatchNorms folded" if ld.folds else ""
    for note in plan.notes:  # what was chosen for the user (hold-out size, labels, ...)
        progress("load", 0.9, note)
    where = f", on {ld.placement['device']}" + (" (blocks streamed one at a time)" if ld.placement.get("offload") else "")
    progress("load", 1.0, f"{len(layers)} layers, {sum(l.numel for l in layers):,} weights{folded}{where}")

    t = time.perf_counter()
    progress("calibrate", 0.0, f"{plan.calib} → calibration, {plan.eval} → evaluation")
    calib, evals, calib_info = prepared_batches(lm, plan)
    if spec.quantizer != "rtn":
        progress("calibrate", 0.5, f"{spec.quantizer}: Hessians of {len(layers)} layers (samples apart from the calibration ones)")
    quantizer = job_quantizer(spec.quantizer, spec.quantizer_params, lm, plan, layers, modules, calib)
    timings["calibrate"] = time.perf_counter() - t
    progress("calibrate", 1.0, f"{calib_info['samples']} calibration samples")

    if spec.solver_name == JOINT:
        return _run_joint(spec, ld, formats, solver, calib, evals, timings, progress)

    t = time.perf_counter()
    ctx = ProxyContext(lm.model, layers, modules, lm.task, calib, formats, spec.seed,
                       lambda f, m: progress("sensitivity", f, m), ld.table_sha256, calib_info, quantizer=quantizer)
    if table is None:
        table = compute_table(proxy, ctx) if compute_table else proxy.compute(ctx)
    timings["sensitivity"] = time.perf_counter() - t
    progress("sensitivity", 1.0, f"{proxy.name}: {table.timing.get('seconds', 0):.1f}s")

    t = time.perf_counter()
    progress("solve", 0.0, solver.name)
    problem = Problem(table.values, costs, spec.budgets, ties)
    solution = solver.solve(problem)
    timings["solve"] = time.perf_counter() - t
    progress("solve", 1.0, f"objective {solution.objective:.4g}, gap {solution.gap}")

    t = time.perf_counter()
    ev = Evaluator(lm.model, modules, lm.task, quantizer)
    baselines = _baselines(ev, formats, costs, evals, lambda f, m: progress("evaluate", f, m))
    solved = ev.metrics([formats[k] for k in solution.choice], evals)
    timings["evaluate"] = time.perf_counter() - t
    progress("evaluate", 1.0, f"{lm.task.metric} {solved[lm.task.metric]:.4g}")

    choice, refine_info, unrefined = solution.choice, None, None
    if spec.do_refine:
        t = time.perf_counter()
        judge, judge_source = refine_judge(lm, plan, ev, formats, calib, spec.judge_samples)
        progress("refine", 0.0, f"judge: {judge.samples} samples ({judge_source})")
        start, start_problem, loop_info = solution.choice, problem, None
        if spec.refine_method == "loop":
            quiet = dataclasses.replace(ctx, progress=None)  # its cells report as refine rounds, not as sensitivity
            loop = operating_point_loop(
                problem, formats, cell_measure(quiet, ev.cache), judge,
                lambda p: solver.solve(p).choice, max_seconds=spec.refine_seconds, start=solution.choice,
                progress=lambda r, n, msg: progress("refine", min(1.0, (time.perf_counter() - t) / spec.refine_seconds), msg))
            start, start_problem, loop_info = loop.choice, problem.with_loss(loop.table), loop.to_dict()
            progress("refine", min(1.0, (time.perf_counter() - t) / spec.refine_seconds),
                     f"loop from {'uniform ' + loop.start if loop.began == 'uniform' else 'the solver policy'}: judge loss "
                     f"{loop.start_loss:.4g} (uniform) → {loop.final_loss:.4g}, "
                     f"{loop.measured_cells} cells measured ({loop.stopped_by})")
        left = max(spec.refine_seconds - (time.perf_counter() - t), 1e-3)
        res = refine(start_problem, start, judge, spec.refine_evals, max_seconds=left,
                     progress=lambda i, n, best: progress(
                         "refine", min(1.0, max(i / n, (time.perf_counter() - t) / spec.refine_seconds)),
                         f"eval {i}/{n}, best judge loss {best:.4g}"))
        choice, refine_info = res.choice, res.to_dict()
        refine_info.pop("history", None)
        refine_info["method"] = spec.refine_method
        if loop_info is not None:
            refine_info["loop"] = loop_info
            refine_info["start_measured"] = loop_info["start_measured"]  # the loop's start: uniform
        refine_info.update(judge_samples=judge.samples, judge_source=judge_source, judge_batches=judge.batches_run,
                           stopped_early=judge.stopped_early)
        unrefined = solved
        # the policy refine returns, measured: the loop may change it even when no move is accepted
        solved = solved if np.array_equal(choice, solution.choice) else ev.metrics([formats[k] for k in choice], evals)
        why = {"time": f", stopped at the {spec.refine_seconds:g} s limit", "evals": ""}.get(res.stopped_by, ", no untried move improves")
        progress("refine", 1.0, f"{res.accepted} accepted of {res.evals} evaluations{why}")
        uniform = uniform_check(problem, judge, res.final_loss)
        refine_info["uniform_check"] = uniform
        if uniform["chosen"] is not None:
            k = [f.label for f in formats].index(uniform["chosen"])
            choice = np.full(len(layers), k)
            solved = ev.metrics([formats[k]] * len(layers), evals)
            progress("refine", 1.0, f"uniform {uniform['chosen']} judged better than the mixed policy: returning it")
        timings["refine"] = time.perf_counter() - t

    t = time.perf_counter()
    reference, measured_increase = prediction_check(table, ev, formats, choice, calib)
    timings["evaluate"] += time.perf_counter() - t

    metric = lm.task.metric
    policy = build_policy(
        lm.ref, lm.sha256, layers, formats, choice, spec.budgets, costs.cost(choice), ties.names(layers),
        quantizer=Quantizer(**quantizer.record()),
        predicted=Predicted(proxy=table.proxy, loss_increase=problem.objective(choice), reference=reference,
                            measured_increase=measured_increase),
        measured=Measured(metric=metric, value=solved[metric], float=baselines["float"][metric],
                          uniform={k: v[metric] for k, v in baselines["uniform"].items()},
                          uniform_avg_bits=baselines["uniform_cost"],
                          extra={k: v for k, v in solved.items() if k != metric}),
        solver=SolverInfo(**{k: v for k, v in solution.to_dict().items() if k not in ("front",)}),
        refine=refine_info, preprocess=ld.preprocess())
    return SearchResult(policy, table, solution, baselines, timings, unrefined)


def prediction_check(table: SensitivityTable, ev: Evaluator, formats: list[Format], choice: np.ndarray,
                     calib: list[dict]) -> tuple[str, float]:
    """The increase the table predicts, measured: calibration loss of the policy minus that of the
    table's reference point (float, or the operating-point format of a ``context`` table)."""
    label = (table.params or {}).get("context")
    ref = next((f for f in formats if f.label == label), None) if label else None
    ref_formats = [ref] * len(choice) if ref is not None else [Format(FLOAT_BITS)] * len(choice)
    policy = ev.loss([formats[int(k)] for k in choice], calib)
    return (ref.label if ref is not None else "float"), policy - ev.loss(ref_formats, calib)


def _run_joint(spec, ld: Loaded, formats, params, calib, evals, timings, progress) -> SearchResult:
    """The joint (APQ) path: no sensitivity table; the search measures policies itself."""
    from proxies.base import batch_mean_loss, swapped
    from workers.joint import JointWeights, run_joint
    _, search, pred = params
    lm, layers, modules, space = ld.lm, ld.layers, ld.modules, ld.space
    progress("sensitivity", 1.0, "joint search: no sensitivity table (it measures sampled policies)")
    t = time.perf_counter()
    float_loss = batch_mean_loss(lm.task, lm.model, calib)
    prior = None
    if pred.prior == "fisher":
        from proxies.fisher import FisherProxy
        from workers.joint import fisher_prior
        ctx = ProxyContext(lm.model, layers, modules, lm.task, calib, formats, spec.seed, None, ld.table_sha256, {})
        prior = fisher_prior(space, modules, FisherProxy().diagonal(ctx)[0])
        progress("solve", 0.02, "Fisher prior for the predictor")
    res = run_joint(space, modules, lambda: batch_mean_loss(lm.task, lm.model, calib), spec.budgets, search, pred,
                    lambda f, m: progress("solve", f, m), prior)
    timings["solve"] = time.perf_counter() - t
    progress("solve", 1.0, f"predicted {res.predicted_loss:.4g}, measured {res.measured_loss:.4g} (calibration)")
    t = time.perf_counter()
    ev = Evaluator(lm.model, modules, lm.task)
    baselines = _baselines(ev, formats, space.costs, evals, lambda f, m: progress("evaluate", f, m))
    with swapped(modules, JointWeights(modules, space).policy(res.choice)):
        solved = lm.task.evaluate(lm.model, evals)
    timings["evaluate"] = time.perf_counter() - t
    progress("evaluate", 1.0, f"{lm.task.metric} {solved[lm.task.metric]:.4g}")
    metric = lm.task.metric
    chosen_formats = [space.format_of(int(j)) for j in res.choice]
    ratios = {l.name: space.ratio_of(int(j)) for l, j in zip(layers, res.choice) if space.ratio_of(int(j)) > 0}
    policy = build_policy(
        lm.ref, lm.sha256, layers, chosen_formats, np.arange(len(layers)), spec.budgets, space.cost(res.choice),
        predicted=Predicted(proxy="joint-predictor", loss_increase=res.predicted_loss - float_loss),
        measured=Measured(metric=metric, value=solved[metric], float=baselines["float"][metric],
                          uniform={k: v[metric] for k, v in baselines["uniform"].items()},
                          uniform_avg_bits=baselines["uniform_cost"],
                          extra={k: v for k, v in solved.items() if k != metric}),
        solver=SolverInfo(name=JOINT, objective=res.predicted_loss, lower_bound=None, gap=None,
                          measured_calibration_loss=res.measured_loss, float_calibration_loss=float_loss,
                          candidates=res.candidates, predictor=res.predictor, samples_measured=res.samples_measured),
        sparsity=ratios,
        sparse_format=("structured: the pruned output channels are removed; kept channels stored dense" if space.structured
                       else "bitmask: 1 bit per weight + kept values at the layer's bits + dense scales"),
        preprocess=ld.preprocess())
    return SearchResult(policy, None, None, baselines, timings, None)


def refine_judge(lm: LoadedModel, plan, ev: Evaluator, formats: list[Format], calib: list[dict],
                 judge_samples: int | None = None) -> tuple[RacingJudge, str]:
    """Refine's judge and where its samples come from: calibration-source samples apart from
    the calibration batches (and from the Hessian samples of the evaluator's GPTQ quantizer), so
    the moves it accepts are not fitted to the noise of the samples the table was measured on.
    With ``judge_samples=0``, or when the source has nothing left, it judges on the calibration
    batches and says so."""
    apart = ev.cache.quantizer.apart_samples
    batches, n = judge_batches(lm, plan, judge_samples, apart) if judge_samples != 0 else ([], 0)
    if n:
        return ev.judge(formats, lm.task.prepare(lm.model, batches)), "held apart"
    why = "judge_samples=0" if judge_samples == 0 else "the source has no samples left"
    return ev.judge(formats, calib), f"calibration ({why})"


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


def reference_formats(formats: list[Format]) -> list[Format]:
    """One format per bit-width for the uniform baselines: the g64 one when the menu has it,
    else the first group size listed for that bit-width."""
    out: dict[int, Format] = {}
    for f in formats:
        if f.is_float:
            continue
        if f.bits not in out or (f.group_size == REFERENCE_GROUP and out[f.bits].group_size != REFERENCE_GROUP):
            out[f.bits] = f
    return [out[b] for b in sorted(out)]


def _baselines(ev: Evaluator, formats: list[Format], costs: CostModel, evals, progress) -> dict:
    """Float and every uniform policy of the job's formats, measured on the same held-out data,
    with each uniform policy's avg_bits."""
    n_layers = len(costs.layers)
    out = {"float": ev.task.evaluate(ev.model, evals), "uniform": {}, "uniform_cost": {}}
    for i, f in enumerate(reference_formats(formats)):
        progress(i / max(len(formats), 1), f"uniform {f.label}")
        out["uniform"][str(f.bits)] = ev.metrics([f] * n_layers, evals)
        out["uniform_cost"][str(f.bits)] = costs.cost(np.full(n_layers, formats.index(f)))["avg_bits"]
    return out


def task_layers(lm: LoadedModel, include_embeddings: bool = False, include_head: bool = False,
                x: torch.Tensor | None = None) -> list:
    """Quantizable layers that the task's output depends on, in model order. ``x`` (one sample
    at the data's input shape) gives conv MACs their real output sizes."""
    if x is None and lm.kind == "classifier" and lm.input_shape:
        x = torch.zeros(1, *lm.input_shape)
    example = None if x is None else (lambda model: lm.task.logits(model, {"x": x}))
    pairs = discover_layers(lm.model, example, include_embeddings, include_head)
    return [p for p in pairs if not p[0].name.startswith(lm.unused)]
