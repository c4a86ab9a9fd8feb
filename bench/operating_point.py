"""Operating-point bench (issue 16 §3): are sensitivities measured with the rest of the model
already quantized better than sensitivities measured from the float model?

For each budget (the costs of uniform 3-bit and 4-bit at g64), the `measured` table is computed
twice: from float (DESIGN §2's definition: every other layer in float) and at the operating point
(every other layer in the uniform g64 format nearest the budget, as exllamav3 measures upgrades
from a quantized base). Each is solved with the exact ILP, then refined with the same judge on the
same held-apart samples; every policy is measured on the same held-out data. It also reports how
far each table's prediction is from the calibration loss it predicts (the additivity error).

    python bench/operating_point.py [--model minilm|smollm2|digits] [--smollm-blocks 0-29] [--refine-evals 300]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from quality import add_setup_args, setup_model  # noqa: E402
from proxies.base import ProxyContext  # noqa: E402
from proxies.evaluate import Evaluator  # noqa: E402
from proxies.registry import get_proxy  # noqa: E402
from search.defaults import DEFAULT_REFINE_EVALS, DEFAULT_REFINE_SECONDS  # noqa: E402
from search.problem import Problem  # noqa: E402
from search.refine import refine  # noqa: E402
from search.solvers import get_solver  # noqa: E402
from workers.pipeline import reference_formats, refine_judge  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm", choices=["minilm", "smollm2", "digits"])
    add_setup_args(ap, smollm_blocks="0-29")
    ap.add_argument("--refine-evals", type=int, default=DEFAULT_REFINE_EVALS)
    ap.add_argument("--refine-seconds", type=float, default=DEFAULT_REFINE_SECONDS)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.bits = [int(b) for b in args.bits.split(",")]
    args.group_sizes = [None if g == "pc" else int(g) for g in args.group_sizes.split(",")]

    st = setup_model(args.model, args)
    lm, formats, costs, n = st.lm, st.formats, st.costs, st.n
    ev = Evaluator(lm.model, st.modules, lm.task)
    metric = lm.task.metric
    judge, judge_source = refine_judge(lm, st.plan, ev, formats, st.calib, args.judge_samples)
    ref = {f.bits: f for f in reference_formats(formats)}
    uniform = {b: ev.metrics([ref[b]] * n, st.evals) for b in (3, 4)}
    print(f"{st.ref}: {n} layers, {len(formats)} formats, {st.info.get('samples')} calibration samples, "
          f"{st.eval_samples} held-out samples, judge {judge.samples} ({judge_source})", flush=True)

    tables, seconds = {}, {}

    def table(context: str | None):
        if context not in tables:
            ctx = ProxyContext(lm.model, st.layers, st.modules, lm.task, st.calib, formats, 0, None, lm.sha256, st.info)
            t = time.perf_counter()
            tables[context] = get_proxy("measured", context=context).compute(ctx)
            seconds[context] = time.perf_counter() - t
            print(f"  measured table, context {context or 'float'}: {seconds[context]:.0f}s", flush=True)
        return tables[context]

    rows = []
    for bits, budget in zip((3, 4), (st.budgets[0], st.budgets[2])):
        for context in (None, ref[bits].label):
            tb = table(context)
            prob = Problem(tb.values, costs, {"avg_bits": budget})
            sol = get_solver("ilp").solve(prob)
            chosen = [formats[k] for k in sol.choice]
            solved = ev.metrics(chosen, st.evals)
            base = tb.diagnostics["base_loss"]
            predicted = base + sol.objective
            measured_calib = ev.loss(chosen, st.calib)
            t = time.perf_counter()
            res = refine(prob, sol.choice, judge, args.refine_evals, max_seconds=args.refine_seconds)
            refined = ev.metrics([formats[k] for k in res.choice], st.evals) if res.accepted else solved
            row = {"bits": bits, "budget": budget, "context": context or "float", "uniform": uniform[bits][metric],
                   "ilp": solved[metric], "recipe": refined[metric], "ilp_se": solved.get("kl_stderr"),
                   "recipe_se": refined.get("kl_stderr"), "predicted_calib": predicted,
                   "measured_calib": measured_calib, "refine": {k: v for k, v in res.to_dict().items() if k != "history"},
                   "refine_wall": time.perf_counter() - t, "table_seconds": seconds[context]}
            rows.append(row)
            print(f"  {budget:.4f} bits, context {row['context']}: ilp {row['ilp']:.5g} ({row['ilp'] / row['uniform']:.3f}× "
                  f"uniform), recipe {row['recipe']:.5g} ({row['recipe'] / row['uniform']:.3f}×); calibration loss "
                  f"predicted {predicted:.5g}, measured {measured_calib:.5g}; refine {res.accepted}/{res.evals} "
                  f"({res.stopped_by})", flush=True)

    print(f"\n{st.ref}, {metric} on {st.eval_samples} held-out samples, menu bits {args.bits} × groups "
          f"{args.group_sizes}")
    print("| budget | table measured from | uniform | measured + ilp | recipe (+ refine) | calibration loss predicted / measured | table s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['budget']:.4f} | {r['context']} | {r['uniform']:.5g} | {r['ilp']:.5g} ({r['ilp'] / r['uniform']:.3f}×) | "
              f"{r['recipe']:.5g} ({r['recipe'] / r['uniform']:.3f}×) | {r['predicted_calib']:.5g} / {r['measured_calib']:.5g} | "
              f"{r['table_seconds']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"model": st.ref, "metric": metric, "rows": rows}, indent=2, default=float))


if __name__ == "__main__":
    main()
