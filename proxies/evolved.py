"""``evolved`` (EMQ): a proxy program found by evolution on the user's own model, or a stored one
re-used by name (``proxy=evolved:<name>``).

Without ``program`` the proxy (1) samples ``n_policies`` random mixed-precision policies across
the budget range and measures each one's real calibration loss — the ground-truth set, fanned
out over Ray when the context offers a ``map_policies`` hook; (2) evolves programs over the
model's primitives (search/evolved/genetic.py) for Kendall τ with that loss on a training part; (3)
stores the winner (formula, tree, τ on the held-out part, the ground truth) under ``name``; and
(4) returns the winner's table. With ``program=<name>`` it loads the stored program and only
computes the primitives of this model."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from proxies.base import Proxy, ProxyContext
from proxies.evaluate import Evaluator
from proxies.primitives import compute_primitives
from search.budgets import CostModel
from search.evolved.genetic import GeneticParams, genetic_search
from search.evolved.ground_truth import rank_corr, sample_policies, split
from search.evolved.program import Program, predict, program_json, scores
from search.params import PROGRAM_NAME, check_proxy_model, evolved_store_dir, stored_program

def save_program(name: str, doc: str) -> Path:
    if not PROGRAM_NAME.match(name):
        raise ValueError(f"evolved proxy name {name!r}: use letters, digits, '_', '.', '-' (at most 64)")
    d = evolved_store_dir()
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{name}.{os.getpid()}.tmp"
    tmp.write_text(doc)
    tmp.replace(d / f"{name}.json")
    return d / f"{name}.json"


def load_program(name: str) -> tuple[Program, dict]:
    doc = json.loads(stored_program(name).read_text())
    return Program.from_dict(doc["program"]), doc


class EvolvedProxy(Proxy):
    name = "evolved"

    def check_model(self, n_layers: int, n_formats: int) -> None:
        check_proxy_model(self.name, self.params, n_layers, n_formats)

    def _compute(self, ctx: ProxyContext):
        p = self.params
        self.check_model(len(ctx.layers), len(ctx.formats))
        t0 = time.perf_counter()
        prim = compute_primitives(ctx, int(p["samples"]), int(p["gradient_samples"]))
        if p["program"] is not None:
            prog, doc = load_program(p["program"])
            table = scores(prog, prim)
            return table, None, {"formula": prog.formula(), "program": p["program"],
                                 "evolved_on": doc.get("model_sha256"), "primitives_seconds": time.perf_counter() - t0}
        choices, truth = self.ground_truth(ctx)
        train, hold = split(len(truth), float(p["holdout"]), ctx.seed)
        params = GeneticParams(population=int(p["population"]), generations=int(p["generations"]),
                               max_depth=int(p["max_depth"]), seed=ctx.seed, tournament=min(4, int(p["population"])))
        res = genetic_search(
            prim, choices, truth, train, hold, params,
            lambda g, n, best: ctx.report(g / n, f"generation {g}/{n}: τ {best.tau:.3f} {best.program.formula()}"))
        name = p["name"] or f"{(ctx.model_sha256 or 'model')[:12]}-s{ctx.seed}"
        meta = {"name": name, "model_sha256": ctx.model_sha256, "formats": [f.label for f in ctx.formats],
                "tau_train": res.best.tau, "spearman_train": res.best.rho, "tau_holdout": res.tau_holdout,
                "spearman_holdout": res.rho_holdout, "history": res.history, "screened_out": res.screened,
                "ground_truth": {"choices": choices.tolist(), "loss": truth.tolist(), "train": train.tolist(),
                                 "holdout": hold.tolist()}}
        path = save_program(name, program_json(res.best.program, meta))
        table = scores(res.best.program, prim)
        diag = {k: v for k, v in meta.items() if k not in ("ground_truth", "history")}
        diag.update(formula=res.best.program.formula(), stored=str(path), generations=len(res.history),
                    ground_truth_policies=len(truth))
        return table, None, diag

    def ground_truth(self, ctx: ProxyContext) -> tuple[np.ndarray, np.ndarray]:
        """Random policies stratified by avg bits and their measured calibration loss."""
        costs = CostModel(ctx.layers, ctx.formats)
        numel = np.array([l.numel for l in ctx.layers], float)
        allowed = np.array([not f.is_float for f in ctx.formats]) if any(not f.is_float for f in ctx.formats) else None
        choices = sample_policies(costs.total_bits, numel, int(self.params["n_policies"]), ctx.seed, allowed)
        if ctx.map_policies is not None:
            return choices, np.array(ctx.map_policies(choices), dtype=float)
        ev = Evaluator(ctx.model, ctx.modules, ctx.task, ctx.quantizer)  # caches each (layer, format) quantization
        truth = []
        for i, c in enumerate(choices):
            truth.append(ev.loss([ctx.formats[int(k)] for k in c], ctx.batches))
            ctx.report(0.1 * (i + 1) / len(choices), f"ground truth {i + 1}/{len(choices)}")
        return choices, np.array(truth)


def held_out_tau(table: np.ndarray, doc: dict) -> tuple[float, float]:
    """τ and ρ of any L×K table on a stored program's held-out ground truth (the comparison
    table of built-in proxies uses this)."""
    gt = doc["ground_truth"]
    choices, loss, hold = np.array(gt["choices"]), np.array(gt["loss"]), np.array(gt["holdout"])
    return rank_corr(predict(table, choices[hold]), loss[hold])
