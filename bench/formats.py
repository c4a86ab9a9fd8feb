"""Runtime formats bench (issue 18): bitplan's policy in a runtime's own formats against what a
person choosing a quantized file compares it with, on held-out data.

``--target llamacpp``: the menu is llama.cpp's ggml types, priced exactly (a 576-wide row that
256 does not divide is stored in llama.cpp's fallback type, and costs so). Budgets: the sizes of
uniform q3_K and q4_K and of llama.cpp's own Q3_K_M and Q4_K_M mixes, whose per-tensor types come
from llama-quantize's rules (bench/llamacpp_recipes.py, read from ggml-org/llama.cpp
src/llama-quant.cpp at 007dbbf). ``--target modelopt``: {NVFP4, FP8, float} against uniform NVFP4
and FP8, at effective bits between them (ModelOpt AutoQuantize's search space).

Rows per budget: fisher + ilp (the table alone) and, with ``--loop``, the causal-LM recipe (fisher
+ the operating-point loop, ``--refine-seconds``); MiniLM's recipe is the measured table + refine,
run with ``--measured``. Quality: a causal LM's mean per-token KL to the float model (± s.e. over
windows) on wikitext-2 test windows; MiniLM's embedding cosine loss on held-out sentences.

    python bench/formats.py --model builtin:smollm2-135m --target llamacpp [--loop --refine-seconds 120]
    python bench/formats.py --model builtin:minilm-l6 --target llamacpp --measured
    python bench/formats.py --model builtin:smollm2-135m --target modelopt [--budgets 5,6]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from proxies.base import ProxyContext  # noqa: E402
from proxies.device import place_model, resolve_device  # noqa: E402
from proxies.evaluate import Evaluator  # noqa: E402
from proxies.measured import cell_measure  # noqa: E402
from proxies.registry import get_proxy  # noqa: E402
from search.budgets import CostModel  # noqa: E402
from search.formats import Format, parse_formats  # noqa: E402
from search.local import operating_point_loop  # noqa: E402
from search.problem import Problem  # noqa: E402
from search.refine import refine  # noqa: E402
from search.solvers import get_solver  # noqa: E402
from search.targets import get_target  # noqa: E402
from workers.batches import plan_for, prepared_batches  # noqa: E402
from workers.pipeline import job_quantizer, refine_judge, task_layers  # noqa: E402
from workers.sources import load_model  # noqa: E402

_spec = importlib.util.spec_from_file_location("llamacpp_recipes", HERE / "llamacpp_recipes.py")
recipes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recipes)

# BERT (MiniLM) module names → the Llama names the recipe rules are written for (llama.cpp's
# BERT tensors are attn_q/k/v/output, ffn_up/down: the same categories)
BERT_TO_LLAMA = [(r"attention\.self\.query$", "self_attn.q_proj"), (r"attention\.self\.key$", "self_attn.k_proj"),
                 (r"attention\.self\.value$", "self_attn.v_proj"), (r"attention\.output\.dense$", "self_attn.o_proj"),
                 (r"intermediate\.dense$", "mlp.up_proj"), (r"(?<!attention\.)output\.dense$", "mlp.down_proj")]


def llama_name(name: str) -> str:
    m = re.match(r"^(?:.*\.)?layer\.(\d+)\.(.*)$", name)
    if not m or name.startswith("model.layers."):
        return name
    for pat, rep in BERT_TO_LLAMA:
        if re.search(pat, m.group(2)):
            return f"model.layers.{m.group(1)}.{rep}"
    raise ValueError(f"no llama.cpp category for {name}")


def recipe_choice(ftype: str, layers, formats: list[Format], n_layer: int) -> np.ndarray:
    """The llama.cpp mix as a format index per layer (the types it names are all in the menu)."""
    names = {llama_name(l.name): i for i, l in enumerate(layers)}
    tensors = [(llama_name(l.name), l.numel // l.in_features, l.in_features) for l in layers]
    types = recipes.llamacpp_types(ftype, tensors, n_layer, tied_embeddings=True)
    labels = [f.label for f in formats]
    choice = np.zeros(len(layers), dtype=int)
    for name, i in names.items():
        choice[i] = labels.index(types[name])
    return choice


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--target", choices=["llamacpp", "modelopt"], default="llamacpp")
    ap.add_argument("--budgets", help="modelopt: avg_bits budgets (default 5,6,7)")
    ap.add_argument("--n-calib", type=int, help="calibration samples (default: the model's: 8 windows × 256 for SmolLM2)")
    ap.add_argument("--n-eval", type=int, help="held-out samples (default 64 windows for an LM, 256 sentences otherwise)")
    ap.add_argument("--seq-len", type=int)
    ap.add_argument("--loop", action="store_true", help="also fisher + the operating-point loop (the causal-LM recipe)")
    ap.add_argument("--measured", action="store_true", help="also the measured table + ilp + refine (the recipe of "
                    "other model kinds; hours for a whole LM)")
    ap.add_argument("--refine-seconds", type=float, default=120.0, help="the loop's / refine's wall time per budget")
    ap.add_argument("--drop", default="", help="formats to leave out of the menu, e.g. q4_1 (the builtin SmolLM2 is a "
                    "dequantized Q4_1 GGUF, so q4_1 reproduces its 576-wide layers exactly)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)

    t0 = time.perf_counter()
    lm = load_model(args.model)
    place_model(lm.model, resolve_device(args.device))
    causal = lm.kind == "causal_lm"
    n_eval = args.n_eval or (64 if causal else 256)
    plan = plan_for(lm, n_calib=args.n_calib, n_eval=n_eval, seq_len=args.seq_len or (256 if causal else None), seed=0)
    pairs = task_layers(lm)
    layers, modules = [p[0] for p in pairs], [p[1] for p in pairs]
    target = get_target(args.target)
    extra = ["f16"] if args.target == "modelopt" else []
    drop = {d for d in args.drop.split(",") if d}
    formats = parse_formats([f.label for f in target.menu_formats()
                             if (args.target != "modelopt" or f.runtime) and f.label not in drop] + extra)
    costs = CostModel(layers, formats)
    calib, evals, info = prepared_batches(lm, plan)
    n = len(layers)
    quantizer = job_quantizer("rtn", {}, lm, plan, layers, modules, calib)
    ev = Evaluator(lm.model, modules, lm.task, quantizer)
    key, se_key = ("kl_to_float", "kl_stderr") if causal else (lm.task.metric, None)
    n_layer = 1 + max(int(m.group(1)) for l in layers if (m := re.search(r"layers?\.(\d+)\.", l.name)))
    print(f"{args.model}: {n} layers, {sum(l.numel for l in layers):,} weights; target {args.target}, menu "
          f"{[f.label for f in formats]}; {platform.machine()} {torch.get_num_threads()} threads; load + data "
          f"{time.perf_counter() - t0:.0f}s", flush=True)

    rows: list[dict] = []

    def measure(name: str, budget: float | None, choice, seconds: float | None = None) -> dict:
        m = ev.metrics([formats[int(k)] for k in choice], evals)
        used: dict[str, int] = {}
        for l, k in zip(layers, choice):
            eff = formats[int(k)].stored_as(l.in_features).label
            used[eff] = used.get(eff, 0) + 1
        row = {"method": name, "budget": budget, "avg_bits": costs.cost(np.asarray(choice))["avg_bits"],
               "value": m[key], "se": m.get(se_key) if se_key else None, "perplexity": m.get("perplexity"),
               "seconds": seconds, "stored": dict(sorted(used.items(), key=lambda kv: -kv[1]))}
        rows.append(row)
        se = f" ± {row['se']:.4f}" if row["se"] is not None else ""
        print(f"  {name:30} {row['avg_bits']:.4f} bits: {key} {row['value']:.4f}{se}"
              + (f"  ({seconds:.0f}s)" if seconds is not None else "") + f"  {row['stored']}", flush=True)
        return row

    labels = [f.label for f in formats]
    if args.target == "llamacpp":
        anchors = [("uniform q3_K", np.full(n, labels.index("q3_K"))), ("llama.cpp Q3_K_M", recipe_choice("Q3_K_M", layers, formats, n_layer)),
                   ("uniform q4_K", np.full(n, labels.index("q4_K"))), ("llama.cpp Q4_K_M", recipe_choice("Q4_K_M", layers, formats, n_layer))]
    else:
        anchors = [("uniform nvfp4", np.full(n, labels.index("nvfp4"))), ("uniform fp8", np.full(n, labels.index("fp8")))]
    budgets = []
    for name, choice in anchors:
        r = measure(name, None, choice)
        if args.target == "llamacpp":
            budgets.append(r["avg_bits"])
    if args.target == "modelopt":
        budgets = [float(x) for x in (args.budgets or "5,6,7").split(",")]

    ctx = ProxyContext(lm.model, layers, modules, lm.task, calib, formats, 0, None, lm.sha256, info, quantizer=quantizer)
    t = time.perf_counter()
    fisher = get_proxy("fisher").compute(ctx)
    fisher_s = time.perf_counter() - t
    print(f"  fisher table: {fisher_s:.0f}s", flush=True)
    measured = None
    judge = None
    for budget in budgets:
        print(f" budget {budget:.4f} avg bits", flush=True)
        prob = Problem(fisher.values, costs, {"avg_bits": budget})
        t = time.perf_counter()
        start = get_solver("ilp").solve(prob).choice
        measure("bitplan fisher + ilp", budget, start, fisher_s + time.perf_counter() - t)
        if args.loop or args.measured:
            if judge is None:
                judge, _ = refine_judge(lm, plan, ev, formats, calib)
        if args.loop:
            t = time.perf_counter()
            res = operating_point_loop(prob, formats, cell_measure(ctx, ev.cache), judge,
                                       lambda p: get_solver("ilp").solve(p).choice, max_seconds=args.refine_seconds,
                                       start=start)
            measure(f"bitplan fisher + loop {args.refine_seconds:.0f}s", budget, res.choice,
                    fisher_s + time.perf_counter() - t)
        if args.measured:
            t = time.perf_counter()
            if measured is None:
                measured = (get_proxy("measured").compute(ctx), time.perf_counter() - t)
                print(f"  measured table: {measured[1]:.0f}s", flush=True)
            prob_m = Problem(measured[0].values, costs, {"avg_bits": budget})
            sol = get_solver("ilp").solve(prob_m)
            res = refine(prob_m, sol.choice, judge, 300, max_seconds=args.refine_seconds)
            measure("bitplan measured + ilp + refine", budget, res.choice, measured[1] + time.perf_counter() - t)

    data = "KL to float (± s.e. over windows), wikitext-2 test" if causal else f"{key}, held-out sentences"
    print(f"\n{args.model}, all {n} layers, --target {args.target} (menu {', '.join(labels)}); {data}; "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"| budget | method | avg bits | {key} | types stored (tensors) |")
    print("|---|---|---|---|---|")
    for r in rows:
        budget = "—" if r["budget"] is None else f"{r['budget']:.4f}"
        se = f" ± {r['se']:.4f}" if r["se"] is not None else ""
        stored = ", ".join(f"{k} {v}" for k, v in r["stored"].items())
        print(f"| {budget} | {r['method']} | {r['avg_bits']:.4f} | {r['value']:.4f}{se} | {stored} |")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "target": args.target, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
