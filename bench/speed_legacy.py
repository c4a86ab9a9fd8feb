"""The speed tables that predate issue 19, kept for ``bench/speed.py --parts solvers,hutchinson,llm``:
solver times and the pareto front on synthetic tables, Hutchinson error vs probes on MiniLM, and
a recipe run phase by phase on any model (the causal-LM job's timings in the README)."""
from __future__ import annotations

import sys
import time

import numpy as np

from search.budgets import CostModel
from search.formats import Format
from search.layers import LayerInfo
from search.problem import Problem
from search.solvers import get_solver
from search.solvers.pareto import front


def synthetic(n_layers: int, seed: int = 0) -> tuple[list[LayerInfo], list[Format], np.ndarray, CostModel]:
    """Layers of 4 widths; 12 formats (bits 2,3,4,8 × group 32,64,128, asymmetric); loss
    s_l·2^(−2·eff_bits) with per-layer scale and per-format noise, like a real table."""
    rng = np.random.default_rng(seed)
    layers = []
    for i in range(n_layers):
        cols = 512 * (1 + i % 4)
        layers.append(LayerInfo(f"blk.{i // 7}.proj{i % 7}", "Linear", (512, cols), 512 * cols, cols, 512 * cols))
    fmts = [Format(b, g, False) for b in (2, 3, 4, 8) for g in (32, 64, 128)]
    costs = CostModel(layers, fmts)
    eff = costs.total_bits / np.array([l.numel for l in layers])[:, None]
    loss = rng.lognormal(0, 1.5, (n_layers, 1)) * 2.0 ** (-2 * eff) * rng.lognormal(0, 0.1, (n_layers, len(fmts)))
    return layers, fmts, loss, costs


def timed(fn, *args):
    """``fn(*args)`` and the seconds it took."""
    t = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - t


def bench_solvers(out: dict) -> None:
    print("\n## Solvers on synthetic tables (two budgets: avg_bits 3.5 and bops ≤ 0.45 × all-8-bit)")
    print("| layers × formats | solver | seconds | objective | lower bound | gap |")
    print("|---|---|---|---|---|---|")
    out["solvers"] = []
    for n in (200, 2000):
        layers, fmts, loss, costs = synthetic(n)
        bops8 = costs.cost(np.full(n, len(fmts) - 1))["bops"]
        prob = Problem(loss, costs, {"avg_bits": 3.5, "bops": 0.45 * bops8})
        for name in ("ilp", "lp", "convex", "pareto"):
            sol, sec = timed(get_solver(name).solve, prob)
            lb = "—" if sol.lower_bound is None else f"{sol.lower_bound:.6g}"
            gap = "—" if sol.gap is None else f"{sol.gap:.1e}"
            print(f"| {n} × {len(fmts)} | {name} | {sec:.3f} | {sol.objective:.6g} | {lb} | {gap} |")
            out["solvers"].append({"layers": n, "formats": len(fmts), "solver": name, "seconds": sec,
                                   "objective": sol.objective, "lower_bound": sol.lower_bound, "gap": sol.gap})


def bench_pareto(out: dict) -> None:
    print("\n## Pareto front: 50 avg_bits budgets from one table")
    print("| layers × formats | seconds | max gap |")
    print("|---|---|---|")
    out["pareto"] = []
    for n in (200, 2000):
        layers, fmts, loss, costs = synthetic(n)
        prob = Problem(loss, costs, {"avg_bits": 4.0})
        pts, sec = timed(front, prob, "avg_bits", list(np.linspace(2.6, 8.3, 50)))
        gap = max(p["gap"] for p in pts if p["feasible"])
        print(f"| {n} × {len(fmts)} | {sec:.3f} | {gap:.1e} |")
        out["pareto"].append({"layers": n, "seconds": sec, "max_gap": gap, "points": len(pts)})


def bench_hutchinson(out: dict) -> None:
    from proxies.base import ProxyContext
    from workers.pipeline import task_layers
    from proxies.hessian import HessianTraceProxy
    from search.formats import make_formats
    from workers.batches import plan_for, prepared_batches
    from workers.sources import load_model

    lm = load_model("builtin:minilm-l6")
    calib, _, info = prepared_batches(lm, plan_for(lm), with_evals=False)
    pairs = task_layers(lm)
    ctx = ProxyContext(lm.model, [p[0] for p in pairs], [p[1] for p in pairs], lm.task, calib, make_formats([2, 3, 4, 8]))
    max_probes = 64
    proxy = HessianTraceProxy(tol=1e-9, min_probes=2, max_probes=max_probes)
    samples = []
    t = time.perf_counter()
    # record every probe's per-layer estimate by running the estimator with growing budgets is
    # wasteful; instead we run once and keep the raw samples through a small subclass hook
    orig = proxy._converged
    proxy._converged = lambda s: (samples.append(s[-1].copy()) if s else None) or False
    proxy.traces(ctx)
    proxy._converged = orig
    sec = time.perf_counter() - t
    s = np.stack(samples)
    ref = s.mean(0)
    print(f"\n## Hutchinson on MiniLM ({len(ref)} layers, {info['samples']} calibration sentences)")
    print(f"time per probe (one HVP for all layers): {sec / len(s):.3f} s")
    print("| probes | median rel. error vs 64-probe mean | max rel. error | median reported rel. SE |")
    print("|---|---|---|---|")
    out["hutchinson"] = {"seconds_per_probe": sec / len(s), "rows": []}
    for k in (4, 8, 16, 32):
        est = s[:k].mean(0)
        err = np.abs(est - ref) / np.abs(ref)
        rse = s[:k].std(0, ddof=1) / np.sqrt(k) / np.abs(est)
        print(f"| {k} | {np.median(err):.3f} | {err.max():.3f} | {np.median(rse):.3f} |")
        out["hutchinson"]["rows"].append({"probes": k, "median_rel_err": float(np.median(err)),
                                          "max_rel_err": float(err.max()), "median_reported_rse": float(np.median(rse))})


def bench_recipe(out: dict, model: str = "builtin:minilm-l6", budgets: tuple[float, ...] = (3.3,), **spec_kw) -> None:
    """The default recipe end to end, once per budget on one loaded model (as a job with several
    budgets runs), with each phase's time."""
    from search.spec import SearchSpec
    from workers.pipeline import run_search
    from workers.sources import load_model
    t0 = time.perf_counter()
    lm = load_model(model)
    rows, total = [], time.perf_counter() - t0
    for b in budgets:
        t = time.perf_counter()
        res = run_search(SearchSpec(model=model, budgets={"avg_bits": b}, **spec_kw), loaded=lm)
        sec = time.perf_counter() - t
        total += sec
        pol = res.policy
        loop = (pol.refine or {}).get("loop")
        rows.append({"budget": b, "seconds": sec, "timings": res.timings, "measured": pol.measured.value,
                     "uniform": pol.measured.uniform, "metric": pol.measured.metric,
                     "refine": {k: v for k, v in (pol.refine or {}).items() if k in ("method", "stopped_by", "evals", "accepted")},
                     "loop": None if loop is None else {k: loop[k] for k in ("began", "start_measured", "final_measured",
                                                                          "measured_cells", "stopped_by")}
                     | {"rounds": len(loop["rounds"]), "accepted": sum(r["accepted"] for r in loop["rounds"])},
                     "uniform_check": ((pol.refine or {}).get("uniform_check") or {}).get("chosen")})
    phases = list(rows[0]["timings"])
    print(f"\n## Default recipe, {model}, avg_bits {', '.join(f'{b:g}' for b in budgets)}, end to end (load → refine)"
          + (f"; {spec_kw}" if spec_kw else ""))
    print("| phase | " + " | ".join(f"{b:g} bits" for b in budgets) + " |")
    print("|---|" + "---|" * len(budgets))
    for k in phases:
        print(f"| {k} | " + " | ".join(f"{r['timings'].get(k, 0):.1f}" for r in rows) + " |")
    print(f"| **job** | " + " | ".join(f"**{r['seconds']:.1f}**" for r in rows) + " |")
    print(f"| {rows[0]['metric']} | " + " | ".join(f"{r['measured']:.4g}" for r in rows) + " |")
    print("| uniform (nearest bits) | " + " | ".join(
        f"{min(r['uniform'].items(), key=lambda kv: abs(float(kv[0]) - r['budget']))[1]:.4g}" for r in rows) + " |")
    for r in rows:
        if r["loop"]:
            lp = r["loop"]
            print(f"{r['budget']:g} bits: loop began at {lp['began']}, judge {lp['start_measured']:.4g} (uniform) -> "
                  f"{lp['final_measured']:.4g}, {lp['accepted']}/{lp['rounds']} rounds accepted, {lp['measured_cells']} cells, "
                  f"stopped by {lp['stopped_by']}; uniform check chose {r['uniform_check']}")
    print(f"total with one model load: {total:.1f} s")
    out["recipe"] = {"model": model, "seconds": total, "rows": rows, "spec": spec_kw}
