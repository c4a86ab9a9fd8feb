"""APQ bench: joint bit-width + pruning search against the ILP (measured proxy) on the same
budgets, measured on held-out data. Budgets are avg-bits-equivalent sizes (scales, zero points
and, for pruned layers, the sparsity mask included), so "same budget" means same bytes.

    python bench/joint.py [--models digits,minilm] [--budgets 2.5,3.0,3.5]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.spec import SearchSpec  # noqa: E402
from workers.pipeline import run_search  # noqa: E402
from workers.sources import load_model  # noqa: E402

MODELS = {"digits": "builtin:digits-cnn", "minilm": "builtin:minilm-l6"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="digits,minilm")
    ap.add_argument("--budgets", default="2.5,3.0,3.5")
    ap.add_argument("--out", type=Path, default=Path("bench/results/joint.json"))
    args = ap.parse_args()
    print(f"machine: {platform.machine()}  {os.cpu_count()} cpus")
    out = {}
    for key in args.models.split(","):
        ref = MODELS[key]
        lm = load_model(ref)
        rows = []
        print(f"\n### {ref} (held-out {lm.task.metric}; lower is better except accuracy)")
        print("| avg bits ≤ | ILP (measured) | joint, quantization only | joint, + pruning 0/25/50 % | joint avg bits | "
              "layers pruned | held-out τ: transferred / scratch / Fisher prior → used | seconds ILP / joint |")
        print("|---|---|---|---|---|---|---|---|")
        table = None
        for b in (float(x) for x in args.budgets.split(",")):
            common = dict(model=ref, budgets={"avg_bits": b}, bits=[2, 3, 4, 8], group_size=64, refine=False)
            t = time.perf_counter()
            ilp = run_search(SearchSpec(**common, proxy="measured", solver="ilp"), loaded=lm, table=table)
            t_ilp = time.perf_counter() - t
            table = ilp.table
            res = {}
            for name, ratios in (("quant", [0.0]), ("prune", [0.0, 0.25, 0.5])):
                t = time.perf_counter()
                try:
                    r = run_search(SearchSpec(**common, solver="joint", solver_params={"ratios": ratios}), loaded=lm)
                    res[name] = (r.policy, time.perf_counter() - t)
                except ValueError as e:  # e.g. a budget only pruning can meet
                    res[name] = (None, str(e))
            pol, sec = res["prune"]
            q = res["quant"][0]
            rep = pol.solver.model_extra["predictor"] if pol else {}
            row = {"budget": b, "ilp": ilp.policy.measured.value, "joint_quant": q.measured.value if q else None,
                   "joint_prune": pol.measured.value if pol else None, "joint_avg_bits": pol.cost["avg_bits"] if pol else None,
                   "pruned_layers": len(pol.sparsity) if pol else None, "predictor": rep, "seconds_ilp": t_ilp,
                   "seconds_joint": sec, "float": ilp.policy.measured.float}
            rows.append(row)
            fmt = lambda v: "—" if v is None else f"{v:.5g}"
            pt = (f"{rep['transferred']['tau']:.2f} / {rep['scratch']['tau']:.2f} / "
                  f"{rep.get('prior_only', {}).get('tau', float('nan')):.2f} → {rep['used']}") if rep else "—"
            print(f"| {b} | {fmt(row['ilp'])} | {fmt(row['joint_quant'])} | {fmt(row['joint_prune'])} | "
                  f"{fmt(row['joint_avg_bits'])} | {row['pruned_layers']} | {pt} | {t_ilp:.0f} / {sec if isinstance(sec, str) else f'{sec:.0f}'} |")
        out[key] = {"model": ref, "metric": lm.task.metric, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
