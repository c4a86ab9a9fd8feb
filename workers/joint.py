"""The pipeline's phases for the joint search (APQ, the solver "joint"): it makes no sensitivity
table, so after calibration it measures pruned and quantized policies itself (proxies/joint.py),
evaluates the best one and writes a policy with its pruning ratios. workers/pipeline.py runs this
for the registered solver "joint", which declares ``needs_table = False``."""
from __future__ import annotations

import time

import numpy as np

from proxies.base import ProxyContext, batch_mean_loss, swapped
from proxies.evaluate import Evaluator
from proxies.fisher import FisherProxy
from proxies.joint import JointResult, JointWeights, fisher_prior, run_joint
from search.joint import JointSpace
from search.policy import Measured, Predicted, SolverInfo, build_policy
from search.solvers.joint import JointSolver
from workers.pipeline import Progress, SearchResult, _baselines
from workers.prepare import Loaded


def joint_phases(spec, ld: Loaded, formats, solver: JointSolver, calib, evals, timings: dict,
                 progress: Progress) -> SearchResult:
    """The solve and evaluate phases of a joint job: no sensitivity table; the search measures
    policies itself on ``calib``, and the policy it returns is evaluated on ``evals``."""
    lm, modules, space = ld.lm, ld.modules, ld.space
    progress("sensitivity", 1.0, "joint search: no sensitivity table (it measures sampled policies)")
    t = time.perf_counter()
    float_loss = batch_mean_loss(lm.task, lm.model, calib)
    prior = None
    if solver.predictor.prior == "fisher":
        ctx = ProxyContext(lm.model, ld.layers, modules, lm.task, calib, formats, spec.seed, None, ld.table_sha256, {})
        prior = fisher_prior(space, modules, FisherProxy().diagonal(ctx)[0])
        progress("solve", 0.02, "Fisher prior for the predictor")
    res = run_joint(space, modules, lambda: batch_mean_loss(lm.task, lm.model, calib), spec.budgets, solver.params,
                    solver.predictor, lambda f, m: progress("solve", f, m), prior)
    timings["solve"] = time.perf_counter() - t
    progress("solve", 1.0, f"predicted {res.predicted_loss:.4g}, measured {res.measured_loss:.4g} (calibration)")
    t = time.perf_counter()
    ev = Evaluator(lm.model, modules, lm.task)
    baselines = _baselines(ev, formats, space.costs, evals, lambda f, m: progress("evaluate", f, m))
    with swapped(modules, JointWeights(modules, space).policy(res.choice)):
        solved = lm.task.evaluate(lm.model, evals)
    timings["evaluate"] = time.perf_counter() - t
    progress("evaluate", 1.0, f"{lm.task.metric} {solved[lm.task.metric]:.4g}")
    policy = _joint_policy(spec, ld, space, solver, res, float_loss, solved, baselines)
    return SearchResult(policy, None, None, baselines, timings, None)


def _joint_policy(spec, ld: Loaded, space: JointSpace, solver: JointSolver, res: JointResult, float_loss: float,
                  solved: dict, baselines: dict):
    """The policy of the joint search's result: formats and pruning ratios per layer, the
    predicted and measured numbers beside the float model and the uniform policies."""
    lm, layers, metric = ld.lm, ld.layers, ld.lm.task.metric
    chosen_formats = [space.format_of(int(j)) for j in res.choice]
    ratios = {l.name: space.ratio_of(int(j)) for l, j in zip(layers, res.choice) if space.ratio_of(int(j)) > 0}
    return build_policy(
        lm.ref, lm.sha256, layers, chosen_formats, np.arange(len(layers)), spec.budgets, space.cost(res.choice),
        predicted=Predicted(proxy="joint-predictor", loss_increase=res.predicted_loss - float_loss),
        measured=Measured(metric=metric, value=solved[metric], float=baselines["float"][metric],
                          uniform={k: v[metric] for k, v in baselines["uniform"].items()},
                          uniform_avg_bits=baselines["uniform_cost"],
                          extra={k: v for k, v in solved.items() if k != metric}),
        solver=SolverInfo(name=solver.name, objective=res.predicted_loss, lower_bound=None, gap=None,
                          measured_calibration_loss=res.measured_loss, float_calibration_loss=float_loss,
                          candidates=res.candidates, predictor=res.predictor, samples_measured=res.samples_measured),
        sparsity=ratios,
        sparse_format=("structured: the pruned output channels are removed; kept channels stored dense" if space.structured
                       else "bitmask: 1 bit per weight + kept values at the layer's bits + dense scales"),
        preprocess=ld.preprocess())
