"""Evolve a proxy on a model and compare it with every built-in proxy on the same held-out
ground-truth policies (Kendall τ and Spearman ρ of predicted vs measured calibration loss).
Used by ``bitplan evolve`` and bench/evolve.py."""
from __future__ import annotations

import json
import time
from collections.abc import Callable

import torch

from proxies.base import ProxyContext
from proxies.evolved import held_out_tau, load_program
from proxies.registry import get_proxy
from workers.prepare import data_spec, prepare

BUILTIN = ("hessian_trace", "fisher", "orthogonality", "output_error", "measured")


def evolve_and_compare(model: str, bits: list[int], group_size, name: str, evolve_params: dict,
                       compare: tuple[str, ...] = BUILTIN, n_calib: int | None = None, seed: int = 0,
                       builtin_params: dict | None = None,
                       progress: Callable[[str, float, str], None] = lambda *a: None) -> dict:
    torch.manual_seed(seed)
    # the model's own default data, asymmetric formats, on the CPU; no held-out batches (the
    # ground truth is calibration loss)
    prep = prepare(data_spec(model, bits=bits, group_size=group_size, n_calib=n_calib, seed=seed), with_evals=False)
    lm, layers, modules, formats, calib, info = prep.lm, prep.layers, prep.modules, prep.formats, prep.calib, prep.info

    def ctx(phase: str) -> ProxyContext:
        return ProxyContext(lm.model, layers, modules, lm.task, calib, formats, seed,
                            lambda f, m: progress(phase, f, m), prep.table_sha256, info)

    t = time.perf_counter()
    evolved = get_proxy("evolved", name=name, **evolve_params)
    table = evolved.compute(ctx("evolve"))
    _, doc = load_program(name)
    rows = [{"proxy": f"evolved:{name}", "formula": table.diagnostics["formula"], "tau_train": doc["tau_train"],
             "tau_holdout": doc["tau_holdout"], "spearman_holdout": doc["spearman_holdout"],
             "seconds": time.perf_counter() - t}]
    for p in compare:
        t = time.perf_counter()
        tab = get_proxy(p, **(builtin_params or {}).get(p, {})).compute(ctx(p))
        tau, rho = held_out_tau(tab.values, doc)
        rows.append({"proxy": p, "formula": "", "tau_train": None, "tau_holdout": tau, "spearman_holdout": rho,
                     "seconds": time.perf_counter() - t})
    return {"model": model, "layers": len(layers), "formats": [f.label for f in formats], "name": name,
            "ground_truth_policies": len(doc["ground_truth"]["loss"]), "holdout": len(doc["ground_truth"]["holdout"]),
            "rows": rows, "history": doc["history"]}


def print_table(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"{res['model']}: rank correlation with measured loss on {res['holdout']} held-out policies "
                    f"(of {res['ground_truth_policies']})")
    for c in ("proxy", "Kendall τ held-out", "Spearman ρ held-out", "τ train", "seconds"):
        t.add_column(c)
    best_builtin = max((r["tau_holdout"] for r in res["rows"][1:]), default=None)
    for r in res["rows"]:
        t.add_row(r["proxy"], f"{r['tau_holdout']:.3f}", f"{r['spearman_holdout']:.3f}",
                  "—" if r["tau_train"] is None else f"{r['tau_train']:.3f}", f"{r['seconds']:.1f}")
    Console().print(t)
    ev = res["rows"][0]
    print(f"evolved program: {ev['formula']}")
    if best_builtin is not None:
        verdict = "beats" if ev["tau_holdout"] > best_builtin else "does not beat"
        print(f"the evolved proxy {verdict} the best built-in proxy on held-out τ ({ev['tau_holdout']:.3f} vs {best_builtin:.3f})")


def to_json(res: dict) -> str:
    return json.dumps(res, indent=2, default=float)
