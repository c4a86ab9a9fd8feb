"""Quality bench: methods × budgets × models, measured on held-out data beside float and uniform.

Each proxy's table is computed once per model and reused for every budget and solver (as the
service does). Budgets: the costs of uniform 3-bit and 4-bit at group 64 and one between.
Methods: uniform, every proxy + ilp, orthogonality + lp (OMPQ), measured + convex (BAQ-style),
measured + greedy upgrades (exllamav3-style), llama.cpp's _M rule at the budget, and the default
recipe (measured + ilp + refine). With ``--loop``, also measured + the operating-point loop +
moves (refine_method=loop). Prints a table per model and writes JSON.

    python bench/quality.py --models minilm,digits [--bits 2,3,4,5,6,8] [--smollm-blocks 0-3] [--loop]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxies.base import ProxyContext  # noqa: E402
from proxies.evaluate import Evaluator  # noqa: E402
from proxies.precision import resolve_compute_dtype  # noqa: E402
from proxies.registry import get_proxy  # noqa: E402
from search.baselines import greedy_upgrades, llamacpp_mix  # noqa: E402
from search.budgets import CostModel  # noqa: E402
from search.local import operating_point_loop  # noqa: E402
from proxies.measured import cell_measure  # noqa: E402
from search.problem import Problem  # noqa: E402
from search.refine import refine  # noqa: E402
from search.solvers import get_solver  # noqa: E402
from search.defaults import DEFAULT_REFINE_EVALS, DEFAULT_REFINE_PATIENCE, DEFAULT_REFINE_SECONDS  # noqa: E402
from workers.pipeline import reference_formats, refine_judge  # noqa: E402
from workers.prepare import data_spec, prepare  # noqa: E402

MODELS = {"minilm": "builtin:minilm-l6", "smollm2": "builtin:smollm2-135m", "digits": "builtin:digits-cnn"}
# Data sizes per model where the task kind's defaults do not fit a bench: SmolLM2 is cut to what
# 2 CPU cores evaluate in minutes; MiniLM is judged on 1024 held-out paragraphs, where four
# disjoint quarters of 256 differ by about ±0.01 in recipe/uniform (too much for a 0.8× bar).
DATA = {"smollm2": {"n_calib": 4, "n_eval": 8, "seq_len": 128}, "minilm": {"n_eval": 1024}}
PROXY_PARAMS = {"hessian_trace": {}, "fisher": {}, "orthogonality": {}, "output_error": {}, "measured": {}}


@dataclass
class Setup:
    """One model ready for the benches: layers, the format menu, costs, calibration and held-out
    batches, and the uniform-3/4-bit budgets (exact costs at g64)."""
    ref: str
    lm: object
    plan: object
    layers: list
    modules: list
    formats: list
    costs: CostModel
    calib: list
    evals: list
    info: dict
    budgets: list[float]  # uniform 3-bit, the midpoint, uniform 4-bit

    @property
    def n(self) -> int:
        return len(self.layers)

    @property
    def eval_samples(self) -> int:
        return sum(self.lm.task.size(b) for b in self.evals)


def setup_model(key: str, args) -> Setup:
    """Prepare the model (the pipeline's ``prepare``, on the CPU), pick layers (a block subset for
    SmolLM2 on CPU), and the budgets."""
    ref = MODELS[key]
    torch.manual_seed(0)
    given = {"n_calib": args.n_calib, "n_eval": args.n_eval, "seq_len": args.seq_len}
    data = {**DATA[key], **{k: v for k, v in given.items() if v}} if key in DATA else {}  # digits keeps its splits
    p = prepare(data_spec(ref, bits=args.bits, group_size=args.group_sizes, seed=args.seed, **data))
    lm, formats, calib, evals, info = p.lm, p.formats, p.calib, p.evals, p.info
    pairs = list(zip(p.layers, p.modules))
    if key == "smollm2" and args.smollm_blocks:
        lo, hi = (int(x) for x in args.smollm_blocks.split("-"))
        pairs = [q for q in pairs if lo <= int(q[0].name.split(".")[2]) <= hi]
    layers, modules = [q[0] for q in pairs], [q[1] for q in pairs]
    costs = CostModel(layers, formats)
    n = len(layers)
    by_bits = {f.bits: f for f in reference_formats(formats)}
    u3, u4 = (costs.cost(np.full(n, formats.index(by_bits[b])))["avg_bits"] for b in (3, 4))
    budgets = [round(u3 + 1e-9, 6), round((u3 + u4) / 2, 6), round(u4 + 1e-9, 6)]
    return Setup(ref, lm, p.plan, layers, modules, formats, costs, calib, evals, info, budgets)


def run_model(key: str, args) -> dict:
    st = setup_model(key, args)
    ref, lm, layers, modules, formats, costs = st.ref, st.lm, st.layers, st.modules, st.formats, st.costs
    calib, evals, info, budgets, n = st.calib, st.evals, st.info, st.budgets, st.n
    dtype = resolve_compute_dtype(args.compute_dtype)  # the comparison passes' dtype, as the pipeline picks it
    ev = Evaluator(lm.model, modules, lm.task, compute_dtype=dtype)
    metric = lm.task.metric
    rows, tables, tsec = [], {}, {}
    base = {"float": ev.task.evaluate(lm.model, evals)[metric]}
    for f in reference_formats(formats):
        base[f"uniform {f.bits}-bit"] = ev.metrics([f] * n, evals)[metric]
    wanted = {p.strip() for p in args.proxies.split(",")}
    proxies = {k: v for k, v in PROXY_PARAMS.items() if k in wanted or k == "measured"}
    for name, params in proxies.items():
        ctx = ProxyContext(lm.model, layers, modules, lm.task, calib, formats, 0, None, lm.sha256, info, compute_dtype=dtype)
        if key == "smollm2" and name == "hessian_trace":
            params = {"max_probes": args.hutchinson_probes, "min_probes": min(8, args.hutchinson_probes)}
        t = time.perf_counter()
        tables[name] = get_proxy(name, **params).compute(ctx)
        tsec[name] = time.perf_counter() - t
        print(f"  [{key}] {name}: {tsec[name]:.1f}s", file=sys.stderr)
    judge, judge_source = refine_judge(lm, st.plan, ev, formats, calib, args.judge_samples)
    methods = [(p, "ilp") for p in proxies] + [(p, s) for p, s in (("orthogonality", "lp"), ("measured", "convex"))
                                              if p in proxies]
    for budget in budgets:
        nearest_uniform = min(reference_formats(formats),
                              key=lambda f: abs(costs.cost(np.full(n, formats.index(f)))["avg_bits"] - budget))
        row = {"budget": budget, "uniform": base[f"uniform {nearest_uniform.bits}-bit"] if abs(
            costs.cost(np.full(n, formats.index(nearest_uniform)))["avg_bits"] - budget) < 1e-3 else None}
        for proxy, solver in methods:
            prob = Problem(tables[proxy].values, costs, {"avg_bits": budget})
            sol = get_solver(solver).solve(prob)
            row[f"{proxy}+{solver}"] = ev.metrics([formats[k] for k in sol.choice], evals)[metric]
        prob = Problem(tables["measured"].values, costs, {"avg_bits": budget})
        # what users compare with (search/baselines.py): greedy upgrades on the same table
        # (exllamav3's way) and llama.cpp's hand-made _M rule at this budget
        row["measured+greedy"] = ev.metrics([formats[k] for k in greedy_upgrades(prob)], evals)[metric]
        row["llama.cpp _M-style mix"] = ev.metrics([formats[k] for k in llamacpp_mix(layers, formats, costs, {"avg_bits": budget})],
                                                   evals)[metric]
        sol = get_solver("ilp").solve(prob)
        t = time.perf_counter()
        res = refine(prob, sol.choice, judge, args.refine_evals, max_seconds=args.refine_seconds,
                     patience=args.refine_patience)
        row["recipe (measured+ilp+refine)"] = ev.metrics([formats[k] for k in res.choice], evals)[metric]
        row["refine_seconds"] = time.perf_counter() - t
        if args.loop:  # refine_method="loop": the operating-point loop, then moves on its table
            ctx = ProxyContext(lm.model, layers, modules, lm.task, calib, formats, 0, None, lm.sha256, info)
            t = time.perf_counter()
            lp = operating_point_loop(prob, formats, cell_measure(ctx, ev.cache),
                                      judge, lambda p: get_solver("ilp").solve(p).choice, max_seconds=args.refine_seconds,
                                      start=sol.choice)
            left = max(args.refine_seconds - (time.perf_counter() - t), 1e-3)
            res2 = refine(prob.with_loss(lp.table), lp.choice, judge, args.refine_evals, max_seconds=left,
                          patience=args.refine_patience)
            row["measured+loop+refine"] = ev.metrics([formats[k] for k in res2.choice], evals)[metric]
            row["loop_seconds"] = time.perf_counter() - t
            print(f"  [{key}] {budget:.4f}: loop from {lp.start} {lp.start_loss:.5g} -> {lp.final_loss:.5g} "
                  f"({len(lp.rounds)} rounds, {lp.measured_cells} cells, {lp.stopped_by}); moves -> {res2.final_loss:.5g} "
                  f"({res2.accepted} accepted)", file=sys.stderr)
        # The same policies on the calibration data the table was measured on, and on refine's
        # judge samples: how far the additive prediction and each gain carry over to held-out data.
        base_loss = tables["measured"].diagnostics["base_loss"]
        row["calibration loss"] = {
            "uniform": ev.loss([nearest_uniform] * n, calib) if row["uniform"] is not None else None,
            "measured+ilp predicted": base_loss + sol.objective,
            "measured+ilp": ev.loss([formats[k] for k in sol.choice], calib),
            "recipe": ev.loss([formats[k] for k in res.choice], calib),
            "judge: measured+ilp": res.start_loss, "judge: recipe": res.final_loss,
            "refine accepted": res.accepted}
        rows.append(row)
    return {"model": ref, "metric": metric, "layers": n, "baselines": base, "rows": rows, "proxy_seconds": tsec,
            "calibration": info, "eval_batches": len(evals), "eval_samples": st.eval_samples,
            "menu": menu_name(args), "judge": {"samples": judge.samples, "source": judge_source}, "compute_dtype": dtype}


def print_table(res: dict) -> None:
    higher = res["metric"] == "accuracy"
    print(f"\n### {res['model']} — {res['metric']} ({'higher' if higher else 'lower'} is better), {res['layers']} layers, "
          f"menu {res['menu']}, {res['eval_samples']} held-out samples, refine judged on "
          f"{res['judge']['samples']} samples ({res['judge']['source']}), cells and judge in {res.get('compute_dtype', 'float32')}")
    print("baselines: " + ", ".join(f"{k} {v:.5g}" for k, v in res["baselines"].items()))
    keys = [k for k in res["rows"][0] if k not in ("budget", "refine_seconds", "loop_seconds", "calibration loss")]
    print("| method | " + " | ".join(f"{r['budget']:.4f} bits" for r in res["rows"]) + " |")
    print("|---|" + "---|" * len(res["rows"]))
    for k in keys:
        cells = []
        for r in res["rows"]:
            v = r[k]
            cells.append("—" if v is None else f"{v:.5g}")
        print(f"| {k} | " + " | ".join(cells) + " |")
    if not higher:
        ratios = [r["recipe (measured+ilp+refine)"] / r["uniform"] for r in res["rows"] if r["uniform"]]
        print("recipe / uniform at the uniform budgets: " + ", ".join(f"{x:.3f}" for x in ratios))
    for r in res["rows"]:
        c = r.get("calibration loss")
        if c:
            vs_uniform = (f"recipe / uniform {c['recipe'] / c['uniform']:.3f} on calibration, "
                          f"{r['recipe (measured+ilp+refine)'] / r['uniform']:.3f} held out; ") if c["uniform"] and not higher else ""
            print(f"calibration loss at {r['budget']:.4f} bits: {vs_uniform}measured+ilp predicted "
                  f"{c['measured+ilp predicted']:.5g}, measured {c['measured+ilp']:.5g}; recipe {c['recipe']:.5g}; "
                  f"on the judge's samples {c['judge: measured+ilp']:.5g} → {c['judge: recipe']:.5g} "
                  f"({c['refine accepted']} moves accepted)")
    print("proxy seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in res["proxy_seconds"].items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="minilm,digits")
    ap.add_argument("--refine-evals", type=int, default=DEFAULT_REFINE_EVALS)
    ap.add_argument("--refine-seconds", type=float, default=DEFAULT_REFINE_SECONDS)
    ap.add_argument("--refine-patience", type=int, default=DEFAULT_REFINE_PATIENCE)
    ap.add_argument("--proxies", default=",".join(PROXY_PARAMS),
                    help="proxies whose rows to measure (measured always: the recipe's); e.g. measured for the recipe alone")
    ap.add_argument("--loop", action="store_true", help="also refine_method=loop: the operating-point loop, then moves")
    ap.add_argument("--compute-dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="dtype of the measured cells and refine's judge, as a job's compute_dtype (default auto)")
    add_setup_args(ap, smollm_blocks="")
    ap.add_argument("--hutchinson-probes", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path("bench/results/quality.json"))
    run_all(ap.parse_args(), run_model, print_table)


def add_setup_args(ap: argparse.ArgumentParser, smollm_blocks: str) -> None:
    """The format menu and data-size options every bench built on ``setup_model`` shares."""
    ap.add_argument("--bits", default="2,3,4,8", help="format menu bit-widths for every method (default 2,3,4,8)")
    ap.add_argument("--group-sizes", default="32,64,128", help="format menu group sizes, 'pc' = per channel "
                                                                "(uniform baselines use g64)")
    ap.add_argument("--smollm-blocks", default=smollm_blocks, help="e.g. 0-29 (all) or 0-5: restrict SmolLM2 layers to these blocks")
    ap.add_argument("--n-calib", type=int, help=f"calibration samples of every text model (bench defaults: {DATA})")
    ap.add_argument("--n-eval", type=int, help="held-out samples of every text model")
    ap.add_argument("--seq-len", type=int, help="tokens per sample of every text model")
    ap.add_argument("--seed", type=int, default=0, help="data seed of the text models: which calibration and judge samples "
                                                              "are drawn (digits' splits are fixed)")
    ap.add_argument("--judge-samples", type=int, help="samples held apart for refine's judge (default: the "
                                                      "pipeline's per-kind default; 0 = the calibration samples)")


def menu_name(args) -> str:
    return f"bits {{{','.join(map(str, args.bits))}}} × g{{{','.join('pc' if g is None else str(g) for g in args.group_sizes)}}}"


def run_all(args, run_one, show) -> None:
    """Every model of ``--models``: run, print its table, then write all results to ``--out``."""
    args.group_sizes = [None if g == "pc" else int(g) for g in args.group_sizes.split(",")]
    args.bits = [int(b) for b in args.bits.split(",")]
    results = []
    for key in args.models.split(","):
        res = run_one(key.strip(), args)
        show(res)
        results.append(res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
