"""Whole-LM bench (issue 16): SmolLM2-135M, every decoder block (210 Linear layers), judged by
the mean per-token KL of its next-token distributions to the float model's on held-out text,
with standard errors over windows and perplexity beside it.

Budgets: the costs of uniform 3-bit and 4-bit at g64, and 2.5 bits. Methods, each on the same
held-out windows: uniform; fisher + ilp (ModelOpt's gradient score, with the true Fisher of the
KL: next tokens drawn from the float model); fisher + greedy upgrades (exllamav3's optimizer on
the same table); hessian_trace + ilp (HAWQ; with ``--hawq``); the llama.cpp ``_M`` rule at the
budget (search/baselines.py); with ``--loop``, the causal-LM recipe: fisher + the operating-point
loop (search/local.py) within ``--refine-seconds``; and, with ``--recipe``, a whole measured
table at the operating point + ilp + refine — hours on 2 cores for the whole model.

    python bench/llm.py [--n-calib 8] [--seq-len 256] [--n-eval 64] [--bits 2,3,4,8] [--group-sizes 64]
                        [--loop] [--loop-rows 24] [--hawq [--hawq-probes 8]] [--recipe] [--quantizer gptq] [--device cuda]
                        [--no-baselines] [--extra-budgets 2.5] [--uniform-bits 3,4]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from proxies.base import ProxyContext  # noqa: E402
from proxies.evaluate import Evaluator  # noqa: E402
from proxies.registry import get_proxy  # noqa: E402
from search.baselines import greedy_upgrades, llamacpp_mix  # noqa: E402
from search.budgets import CostModel  # noqa: E402
from search.defaults import DEFAULT_REFINE_EVALS, REFINE_SECONDS  # noqa: E402
from search.formats import make_formats  # noqa: E402
from search.problem import Problem  # noqa: E402
from proxies.device import place_model, resolve_device  # noqa: E402
from proxies.measured import cell_measure  # noqa: E402
from search.local import operating_point_loop  # noqa: E402
from search.refine import refine  # noqa: E402
from search.solvers import get_solver  # noqa: E402
from workers.batches import plan_for, prepared_batches  # noqa: E402
from workers.pipeline import job_quantizer, reference_formats, refine_judge, task_layers  # noqa: E402
from workers.sources import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--n-calib", type=int, default=8, help="calibration windows (default 8 × 256 = 2048 tokens)")
    ap.add_argument("--n-eval", type=int, default=64, help="held-out windows (default 64 × 256 = 16384 tokens)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--bits", default="2,3,4,8")
    ap.add_argument("--group-sizes", default="64")
    ap.add_argument("--extra-budgets", default="2.5", help="avg_bits budgets beside uniform 3- and 4-bit's costs")
    ap.add_argument("--hawq", action="store_true", help="also hessian_trace + ilp (Hutchinson probes: slow)")
    ap.add_argument("--hawq-probes", type=int, help="Hutchinson probes for --hawq (default: the proxy's adaptive 8..64; "
                    "on whole SmolLM2 and 2 cores, 64 probes take ~8 min, 8 take ~1 min)")
    ap.add_argument("--recipe", action="store_true", help="also the default recipe (measured at the operating point)")
    ap.add_argument("--loop", action="store_true", help="also the operating-point loop from the fisher table (search/local.py)")
    ap.add_argument("--uniform-bits", help="measure only these uniform rows, e.g. 3,4 (default every bit-width)")
    ap.add_argument("--only-budgets", help="run only these of the budgets, e.g. 4.3125")
    ap.add_argument("--no-baselines", action="store_true", help="skip the greedy and llama.cpp-style rows")
    ap.add_argument("--loop-rounds", type=int, default=50, help="loop rounds at most (it also stops at --refine-seconds)")
    ap.add_argument("--loop-rows", type=int, default=24, help="rows measured per loop round at most")
    ap.add_argument("--refine-evals", type=int, default=DEFAULT_REFINE_EVALS)
    ap.add_argument("--refine-seconds", type=float, default=REFINE_SECONDS["causal_lm"],
                    help="the loop's wall time (default: a causal LM job's)")
    ap.add_argument("--quantizer", choices=["rtn", "gptq"], default="rtn",
                    help="the weight quantizer of every row (gptq: Hessians from calibration-source windows apart)")
    ap.add_argument("--device", default="cpu", help="where the forward passes run (cpu, cuda, auto)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)

    t0 = time.perf_counter()
    lm = load_model(args.model)
    place_model(lm.model, resolve_device(args.device))
    plan = plan_for(lm, n_calib=args.n_calib, n_eval=args.n_eval, seq_len=args.seq_len, seed=0)
    pairs = task_layers(lm)
    layers, modules = [p[0] for p in pairs], [p[1] for p in pairs]
    formats = make_formats([int(b) for b in args.bits.split(",")],
                           [None if g == "pc" else int(g) for g in args.group_sizes.split(",")], False)
    costs = CostModel(layers, formats)
    calib, evals, info = prepared_batches(lm, plan)
    n = len(layers)
    quantizer = job_quantizer(args.quantizer, {}, lm, plan, layers, modules, calib)
    ev = Evaluator(lm.model, modules, lm.task, quantizer)
    tokens = sum(int(b["input_ids"][:, 1:].numel()) for b in evals)
    print(f"{args.model}: {n} layers, {sum(l.numel for l in layers):,} weights; calibration {info['samples']} windows "
          f"({args.n_calib * args.seq_len} tokens), held-out {tokens} tokens; {platform.machine()}, "
          f"{torch.get_num_threads()} threads; load + data {time.perf_counter() - t0:.0f}s", flush=True)

    rows: list[dict] = []

    def measure(name: str, budget: float | None, choice, seconds: float | None = None) -> dict:
        t = time.perf_counter()
        m = ev.metrics([formats[int(k)] for k in choice], evals)
        row = {"method": name, "budget": budget, "avg_bits": costs.cost(np.asarray(choice))["avg_bits"],
               "kl": m["kl_to_float"], "kl_se": m["kl_stderr"], "perplexity": m["perplexity"],
               "top1": m["top1_agreement"], "method_seconds": seconds, "eval_seconds": time.perf_counter() - t}
        rows.append(row)
        print(f"  {name:28} {row['avg_bits']:.4f} bits: KL {row['kl']:.4f} ± {row['kl_se']:.4f}, "
              f"ppl {row['perplexity']:.2f}, top-1 {row['top1']:.3f}"
              + (f"  ({seconds:.0f}s)" if seconds is not None else ""), flush=True)
        return row

    m = ev.task.evaluate(lm.model, evals)
    print(f"  float: perplexity {m['perplexity']:.3f}", flush=True)
    ref = {f.bits: f for f in reference_formats(formats)}
    for b, f in ref.items():
        if args.uniform_bits is None or str(b) in args.uniform_bits.split(","):
            measure(f"uniform {f.label}", None, np.full(n, formats.index(f)))
    budgets = [costs.cost(np.full(n, formats.index(ref[b])))["avg_bits"] for b in (3, 4) if b in ref]
    budgets = sorted(budgets + [float(x) for x in args.extra_budgets.split(",") if x])
    if args.only_budgets:  # e.g. rerun one budget (the same values the default list prints)
        budgets = [b for b in budgets if any(abs(b - float(x)) < 1e-3 for x in args.only_budgets.split(","))]

    tables = {}
    for proxy in ["fisher"] + (["hessian_trace"] if args.hawq else []):
        ctx = ProxyContext(lm.model, layers, modules, lm.task, calib, formats, 0, None, lm.sha256, info,
                               quantizer=quantizer)
        t = time.perf_counter()
        params = ({"min_probes": args.hawq_probes, "max_probes": args.hawq_probes}
                  if proxy == "hessian_trace" and args.hawq_probes else {})
        tables[proxy] = (get_proxy(proxy, **params).compute(ctx), time.perf_counter() - t)
        print(f"  {proxy} table: {tables[proxy][1]:.0f}s", flush=True)
    judge = None
    for budget in budgets:
        print(f" budget {budget:.4f} avg bits", flush=True)
        for proxy, (table, secs) in tables.items():
            prob = Problem(table.values, costs, {"avg_bits": budget})
            t = time.perf_counter()
            measure(f"{proxy} + ilp", budget, get_solver("ilp").solve(prob).choice, secs + time.perf_counter() - t)
            if proxy == "fisher" and not args.no_baselines:
                t = time.perf_counter()
                measure("fisher + greedy", budget, greedy_upgrades(prob), secs + time.perf_counter() - t)
        if args.loop:
            ctx = ProxyContext(lm.model, layers, modules, lm.task, calib, formats, 0, None, lm.sha256, info,
                               quantizer=quantizer)
            prob = Problem(tables["fisher"][0].values, costs, {"avg_bits": budget})
            if judge is None:
                judge, _ = refine_judge(lm, plan, ev, formats, calib)
            t = time.perf_counter()
            res = operating_point_loop(
                prob, formats, cell_measure(ctx, ev.cache), judge,
                lambda p: get_solver("ilp").solve(p).choice, max_rounds=args.loop_rounds, max_rows=args.loop_rows,
                max_seconds=args.refine_seconds, start=get_solver("ilp").solve(prob).choice,
                progress=lambda r, n, msg: print(f"    loop {msg} ({time.perf_counter() - t:.0f}s)", flush=True))
            for e in res.rounds:
                print(f"    round {e['round']} ({e.get('step')}): {e['measured_rows']} rows measured, {e['changed_rows']} change, "
                      f"predicted {e['predicted_delta']:+.4f}, judged {e.get('judged_delta')}, accepted {e['accepted']}", flush=True)
            full = n * (len(formats) - 1)  # a whole operating-point table: every other format of every layer
            print(f"    loop from {res.start}: judge {res.start_loss:.4f} -> {res.final_loss:.4f}; measured "
                  f"{res.measured_cells} cells of the {full} a whole table at this point needs "
                  f"({res.measured_cells / full:.0%}); stopped by {res.stopped_by}, proxy scale {res.scale:.3f}", flush=True)
            measure("fisher + loop (op. point)", budget, res.choice, tables["fisher"][1] + time.perf_counter() - t)
        if not args.no_baselines:
            measure("llama.cpp _M-style mix", budget, llamacpp_mix(layers, formats, costs, {"avg_bits": budget}))
        if args.recipe:
            label = min(ref.values(), key=lambda f: abs(costs.cost(np.full(n, formats.index(f)))["avg_bits"] - budget)).label
            ctx = ProxyContext(lm.model, layers, modules, lm.task, calib, formats, 0, None, lm.sha256, info,
                               quantizer=quantizer)
            t = time.perf_counter()
            table = get_proxy("measured", context=label).compute(ctx)
            prob = Problem(table.values, costs, {"avg_bits": budget})
            sol = get_solver("ilp").solve(prob)
            if judge is None:
                judge, _ = refine_judge(lm, plan, ev, formats, calib)
            res = refine(prob, sol.choice, judge, args.refine_evals, max_seconds=args.refine_seconds)
            measure(f"recipe (measured@{label})", budget, res.choice, time.perf_counter() - t)

    print(f"\n{args.model}, all {n} layers; KL to float (± s.e. over windows) on {tokens} held-out tokens of "
          f"wikitext-2 test; menu bits {args.bits} × g{args.group_sizes}; {args.quantizer.upper()}")
    print("| budget | method | avg bits | KL ± s.e. | perplexity | top-1 agreement |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        budget = "—" if r["budget"] is None else f"{r['budget']:.4f}"
        print(f"| {budget} | {r['method']} | {r['avg_bits']:.4f} | {r['kl']:.4f} ± {r['kl_se']:.4f} | {r['perplexity']:.2f} | {r['top1']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "tokens": tokens, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
