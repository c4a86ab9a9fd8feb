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
from proxies.measured import cell_measure
from proxies.evaluate import Evaluator, RacingJudge
from proxies.device import model_device
from proxies.precision import comparison_precision, resolve_compute_dtype
from search.budgets import CostModel
from search.formats import FLOAT_BITS, Format
from search.policy import Measured, Policy, Predicted, Quantizer, SolverInfo, build_policy
from search.problem import Problem, Solution
from search.local import operating_point_loop
from search.refine import refine, uniform_check
from search.defaults import PHASES  # noqa: F401  (the phases run here, in this order)
from search.spec import REFERENCE_GROUP, SearchSpec
from search.validate import Checked
from search.table import SensitivityTable
from workers.batches import judge_batches
# the load → plan → calibrate step lives in workers/prepare.py; its names stay importable from here
from workers.prepare import (Loaded, Prepared, check_input_fits, example_input, fold_model,  # noqa: F401
                             job_quantizer, load_and_check, prepare, task_layers, validate_static)
from workers.sources import LoadedModel

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


def check_search(spec: SearchSpec, checked: Checked | None = None) -> Loaded:
    """Every check ``run_search`` makes before its first data pass, and nothing more: what
    ``bitplan search --check`` runs (and the tests run on every documented example)."""
    proxy, solver, formats = validate_static(spec, checked)
    return load_and_check(spec, proxy, solver, formats)


def run_search(spec: SearchSpec, progress: Progress = _noop, loaded: LoadedModel | None = None,
               table: SensitivityTable | None = None,
               compute_table: Callable[[Proxy, ProxyContext], SensitivityTable] | None = None,
               checked: Checked | None = None) -> SearchResult:
    """Run every phase; ``loaded``/``table`` let a caller reuse a model or a cached table, and
    ``compute_table`` replaces the in-process sensitivity phase (the service fans it out over
    Ray tasks). ``checked``: the job's validation (``search.validate.validate``, once per job),
    so the spec is not validated again; without it, the spec is validated here."""
    torch.manual_seed(spec.seed)
    # load → plan → calibrate; the spec comes back with its model kind's recipe (proxy, refine method)
    p = prepare(spec, progress, loaded, checked=checked)
    spec, proxy, solver, formats, ld = p.spec, p.proxy, p.solver, p.formats, p.loaded
    lm, plan, layers, modules, ties, costs, space = ld.lm, ld.plan, ld.layers, ld.modules, ld.ties, ld.costs, ld.space
    calib, evals, calib_info, quantizer = p.calib, p.evals, p.info, p.quantizer
    timings: dict[str, float] = dict(p.timings)

    if not solver.needs_table:  # it measures policies itself: its own solve and evaluate phases
        return measuring_phases(solver.name)(spec, ld, formats, solver, calib, evals, timings, progress)

    t = time.perf_counter()
    dtype = resolve_compute_dtype(spec.compute_dtype, model_device(lm.model))  # the comparison passes' dtype
    ctx = ProxyContext(lm.model, layers, modules, lm.task, calib, formats, spec.seed,
                       lambda f, m: progress("sensitivity", f, m), ld.table_sha256, calib_info, quantizer=quantizer,
                       compute_dtype=dtype)
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
    ev = Evaluator(lm.model, modules, lm.task, quantizer, dtype)
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
        res = refine(start_problem, start, judge, spec.refine_evals, max_seconds=left, patience=spec.refine_patience,
                     progress=lambda i, n, best: progress(
                         "refine", min(1.0, max(i / n, (time.perf_counter() - t) / spec.refine_seconds)),
                         f"eval {i}/{n}, best judge loss {best:.4g}"))
        choice, refine_info = res.choice, res.to_dict()
        refine_info.pop("history", None)
        refine_info["method"] = spec.refine_method
        if loop_info is not None:
            refine_info["loop"] = loop_info
            refine_info["start_measured"] = loop_info["start_measured"]  # the loop's start: uniform
        refine_info.update(compute_dtype=dtype, judge_samples=judge.samples, judge_source=judge_source,
                           judge_batches=judge.batches_run, stopped_early=judge.stopped_early,
                           screened_out=judge.screened_out)
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


def measuring_phases(name: str) -> Callable[..., SearchResult]:
    """The solve and evaluate phases of a registered solver that measures policies on the model
    instead of solving a sensitivity table (``Solver.needs_table`` False), by the solver's name:
    ``(spec, loaded, formats, solver, calib, evals, timings, progress) → SearchResult``. Adding
    one is one module plus one line here (imported on use: they build on this module)."""
    from workers.joint import joint_phases
    return {"joint": joint_phases}[name]


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
        # the judge's references come from the same kind of pass as its candidates' (proxies.precision)
        with comparison_precision(ev.compute_dtype, model_device(lm.model)):
            batches = lm.task.prepare(lm.model, batches)
        return ev.judge(formats, batches), "held apart"
    why = "judge_samples=0" if judge_samples == 0 else "the source has no samples left"
    return ev.judge(formats, calib), f"calibration ({why})"


def reference_formats(formats: list[Format]) -> list[Format]:
    """One format per bit-width for the uniform baselines: the g64 one when the menu has it,
    else the first group size listed for that bit-width."""
    out: dict[int, Format] = {}
    for f in formats:
        if f.is_float or f.runtime:
            continue
        if f.bits not in out or (f.group_size == REFERENCE_GROUP and out[f.bits].group_size != REFERENCE_GROUP):
            out[f.bits] = f
    return [out[b] for b in sorted(out)] + [f for f in formats if f.runtime]


def baseline_key(f: Format) -> str:
    """A uniform baseline's name: its bit-width for integer formats, the runtime's name else."""
    return f.runtime or str(f.bits)


def _baselines(ev: Evaluator, formats: list[Format], costs: CostModel, evals, progress) -> dict:
    """Float and every uniform policy of the job's formats, measured on the same held-out data,
    with each uniform policy's avg_bits."""
    n_layers = len(costs.layers)
    out = {"float": ev.task.float_metrics(evals) or ev.task.evaluate(ev.model, evals), "uniform": {}, "uniform_cost": {}}
    for i, f in enumerate(reference_formats(formats)):
        progress(i / max(len(formats), 1), f"uniform {f.label}")
        out["uniform"][baseline_key(f)] = ev.metrics([f] * n_layers, evals)
        out["uniform_cost"][baseline_key(f)] = costs.cost(np.full(n_layers, formats.index(f)))["avg_bits"]
    return out
