"""RTN vs GPTQ: the uniform policies and bitplan's default mixed policy (measured → ilp →
refine), each measured on held-out data with the quantizer it was found with, at the two
uniform budgets (exact costs of uniform 3-bit and 4-bit at g64).

With ``gptq`` the whole recipe runs under GPTQ: the measured table, refine's judge and the
evaluation all quantize with it, as a job with ``quantizer: gptq`` does — its Hessians from
calibration-source samples apart from the calibration batches that measure the results. Prints a table per model
and writes JSON.

    python bench/gptq.py --models minilm,smollm2 [--smollm-blocks 0-3] [--n-calib 16]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxies.base import ProxyContext  # noqa: E402
from proxies.evaluate import Evaluator  # noqa: E402
from proxies.registry import get_proxy  # noqa: E402
from quality import add_setup_args, menu_name, run_all, setup_model  # noqa: E402
from search.problem import Problem  # noqa: E402
from search.refine import refine  # noqa: E402
from search.solvers import get_solver  # noqa: E402
from search.defaults import DEFAULT_REFINE_EVALS, DEFAULT_REFINE_SECONDS  # noqa: E402
from workers.pipeline import job_quantizer, reference_formats, refine_judge  # noqa: E402


def run_model(key: str, args) -> dict:
    st = setup_model(key, args)
    metric = st.lm.task.metric
    by_bits = {f.bits: f for f in reference_formats(st.formats)}
    uniform_budgets = {3: st.budgets[0], 4: st.budgets[2]}
    out = {"model": st.ref, "metric": metric, "layers": st.n, "calibration": st.info, "menu": menu_name(args),
           "eval_samples": st.eval_samples,
           "float": st.lm.task.evaluate(st.lm.model, st.evals)[metric], "runs": []}
    for name in args.quantizers.split(","):
        t = time.perf_counter()
        params = {"n_samples": args.hessian_samples} if name == "gptq" and args.hessian_samples else {}
        q = job_quantizer(name, params, st.lm, st.plan, st.layers, st.modules, st.calib)
        ev = Evaluator(st.lm.model, st.modules, st.lm.task, q)
        run = {"quantizer": q.key(), "seconds": {"hessians": time.perf_counter() - t}}
        t = time.perf_counter()
        for b in (3, 4):
            run[f"uniform {b}-bit"] = ev.metrics([by_bits[b]] * st.n, st.evals)[metric]
        run["seconds"]["uniform"] = time.perf_counter() - t
        t = time.perf_counter()
        ctx = ProxyContext(st.lm.model, st.layers, st.modules, st.lm.task, st.calib, st.formats, 0, None,
                           st.lm.sha256, st.info, quantizer=q)
        table = get_proxy("measured").compute(ctx)
        run["seconds"]["measured table"] = time.perf_counter() - t
        t = time.perf_counter()
        judge, source = refine_judge(st.lm, st.plan, ev, st.formats, st.calib, args.judge_samples)
        run["judge"] = f"{judge.samples} samples ({source})"
        for b, budget in uniform_budgets.items():
            prob = Problem(table.values, st.costs, {"avg_bits": budget})
            sol = get_solver("ilp").solve(prob)
            res = refine(prob, sol.choice, judge, args.refine_evals, max_seconds=args.refine_seconds)
            run[f"recipe @ {budget:.4f}"] = ev.metrics([st.formats[k] for k in res.choice], st.evals)[metric]
            run[f"recipe/uniform @ {b}-bit"] = run[f"recipe @ {budget:.4f}"] / run[f"uniform {b}-bit"]
        run["seconds"]["solve + refine + evaluate"] = time.perf_counter() - t
        run["record"] = q.record()
        out["runs"].append(run)
        print(f"  [{key}] {name}: " + ", ".join(f"{k} {v:.1f}s" for k, v in run["seconds"].items()), file=sys.stderr)
    return out


def print_table(res: dict) -> None:
    print(f"\n### {res['model']} — {res['metric']}, {res['layers']} layers, float {res['float']:.5g}, "
          f"menu {res['menu']}, {res['eval_samples']} held-out samples")
    cols = [k for k in res["runs"][0] if k not in ("quantizer", "seconds", "record", "judge")]
    print("refine's judge: " + ", ".join(f"{r['quantizer']['method']} {r['judge']}" for r in res["runs"]))
    print("| quantizer | " + " | ".join(cols) + " | seconds (Hessians / table) |")
    print("|---|" + "---|" * (len(cols) + 1))
    for run in res["runs"]:
        cells = [f"{run[c]:.5g}" if "/" not in c else f"{run[c]:.3f}" for c in cols]
        s = run["seconds"]
        print(f"| {run['quantizer']['method']} | " + " | ".join(cells)
              + f" | {s['hessians']:.1f} / {s['measured table']:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="minilm,smollm2")
    ap.add_argument("--quantizers", default="rtn,gptq")
    ap.add_argument("--refine-evals", type=int, default=DEFAULT_REFINE_EVALS)
    ap.add_argument("--refine-seconds", type=float, default=DEFAULT_REFINE_SECONDS)
    add_setup_args(ap, smollm_blocks="0-3")
    ap.add_argument("--hessian-samples", type=int, help="GPTQ Hessian samples (default: the task kind's, see "
                                                          "workers.batches.HESSIAN_SAMPLES)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/gptq.json"))
    run_all(ap.parse_args(), run_model, print_table)


if __name__ == "__main__":
    main()
