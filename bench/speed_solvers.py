"""Scale bench of the exact (``ilp``) solver: a synthetic 10,000-layer × 16-format "zoo" table with
three budgets at once (avg_bits, bops, latency_ms), then three successive avg_bits budgets on the
same table. Uses only public APIs that predate the fast ILP (get_solver, Problem, CostModel,
Format, LayerInfo), so the same function times the previous solver too:

    PYTHONPATH=. python bench/speed_solvers.py [--layers N] [--time-limit S] [--json FILE]
    PYTHONPATH=/path/to/other/tree python bench/speed_solvers.py    # the same bench, that tree's solver

Importing this module does nothing but define functions.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from search.budgets import CostModel
from search.formats import Format
from search.layers import LayerInfo
from search.problem import Problem
from search.solvers import get_solver

# (in_features, out_features) of the weights in the zoo: LLM projections and vision convs
_SHAPES = ((512, 512), (1024, 1024), (1024, 2816), (2816, 1024), (2048, 2048), (576, 128), (1152, 256))
# spatial positions a conv applies its weight to (1: a linear layer, MACs per token)
_SPATIAL = (1, 1, 1, 4, 16, 49, 196)


def zoo_formats(n_formats: int = 16) -> list[Format]:
    """Integer formats (2, 3, 4, 6, 8 bits × groups of 32, 64, 128, asymmetric), float, then
    5-bit ones; the first ``n_formats`` of that list."""
    pool = [Format(b, g, False) for b in (2, 3, 4, 6, 8) for g in (32, 64, 128)] + [Format(16)]
    pool += [Format(5, g, False) for g in (32, 64, 128)] + [Format(b, None, True) for b in (4, 8)]
    if not 1 <= n_formats <= len(pool):
        raise ValueError(f"n_formats must be 1..{len(pool)}")
    return pool[:n_formats]


def zoo_table(n_layers: int = 10_000, n_formats: int = 16, seed: int = 0
              ) -> tuple[list[LayerInfo], list[Format], np.ndarray, CostModel]:
    """Layers of several shapes (linear and conv, so BOPs are not proportional to storage),
    ``n_formats`` formats, a loss s_l·2^(−2·eff_bits) with per-cell noise, and a latency table
    that is memory-bound in the stored bits plus a per-format dequantisation cost (widths that are
    not a power of two and small groups pay more, float pays none) with per-cell noise: not
    monotone in bits."""
    rng = np.random.default_rng(seed)
    fmts = zoo_formats(n_formats)
    layers = []
    for i in range(n_layers):
        inf, out = _SHAPES[int(rng.integers(len(_SHAPES)))]
        spatial = _SPATIAL[int(rng.integers(len(_SPATIAL)))]
        kind = "linear" if spatial == 1 else "conv2d"
        layers.append(LayerInfo(f"blk{i // 8}.m{i % 8}", kind, (out, inf), out * inf, inf, out * inf * spatial))
    numel = np.array([l.numel for l in layers], dtype=np.float64)
    macs = np.array([l.macs for l in layers], dtype=np.float64)
    bits = np.array([f.bits for f in fmts], dtype=np.float64)
    group = np.array([f.group_size or 4096 for f in fmts], dtype=np.float64)
    odd = np.isin(bits, (3, 5, 6))                  # unpacking across byte boundaries
    dequant = np.where(bits == 16, 0.0, 0.6 + 0.5 * odd + 16.0 / group)  # relative cost per weight
    eff = (bits + np.where(bits == 16, 0.0, (16 + bits) / group))[None, :]   # bits per weight, scales included
    mem = numel[:, None] * eff / 8 / 2e9           # ms at 2 TB/s
    compute = macs[:, None] * 1e-12 * np.where(bits == 16, 1.0, 0.7)[None, :]
    launch = 1e-4
    noise = rng.lognormal(0, 0.05, (n_layers, len(fmts)))
    lat = (launch + mem + numel[:, None] * dequant[None, :] * 1e-10 + compute) * noise
    latency = {l.name: {f.label: float(v) for f, v in zip(fmts, row)} for l, row in zip(layers, lat)}
    costs = CostModel(layers, fmts, latency_table=latency)
    eff_layer = costs.total_bits / numel[:, None]
    loss = rng.lognormal(0, 1.5, (n_layers, 1)) * 2.0 ** (-2 * eff_layer) * rng.lognormal(0, 0.1, (n_layers, len(fmts)))
    return layers, fmts, loss, costs


def zoo_budgets(costs: CostModel) -> tuple[dict[str, float], list[float]]:
    """The three-at-once budgets and three avg_bits budgets. avg_bits 4.5 alone lets the optimum
    spend ≈ 1.03× the all-w4g64 policy's BOPs and ≈ 1.09× its latency; capping them at 0.92× and
    1.03× makes all three bind."""
    n = len(costs.layers)
    ref = next((i for i, f in enumerate(costs.formats) if (f.bits, f.group_size) == (4, 64)), 0)
    c = costs.cost(np.full(n, ref))
    both = {"avg_bits": 4.5, "bops": 0.92 * c["bops"], "latency_ms": 1.03 * c["latency_ms"]}
    return both, [3.25, 4.0, 5.0]


def _row(label: str, budgets: str, n: int, k: int, sec: float, sol) -> dict:
    """Print one markdown row and return it as a dict (the solution's own solve time included)."""
    lb = "—" if sol.lower_bound is None else f"{sol.lower_bound:.8g}"
    gap = "—" if sol.gap is None else f"{sol.gap:.1e}"
    print(f"| {n} × {k} | {budgets} | {sec:.3f} | {sol.objective:.8g} | {lb} | {gap} |", flush=True)
    return {"case": label, "layers": n, "formats": k, "budgets": budgets, "seconds": sec,
            "solve_seconds": sol.seconds, "objective": sol.objective, "lower_bound": sol.lower_bound,
            "gap": sol.gap}


def bench_ilp_scale(out: dict, n_layers: int = 10_000, n_formats: int = 16, seed: int = 0,
                    time_limit: float | None = None) -> None:
    """Time the ``ilp`` solver (Problem construction included, table build reported apart) on the
    zoo table: three budgets at once, then three successive avg_bits budgets. Rows go to
    ``out["ilp_scale"]``. ``time_limit`` is passed to the solver (HiGHS' cap) when given."""
    import scipy.optimize  # noqa: F401  the solver imports it on first use: a one-off cost kept out of the times
    import scipy.sparse  # noqa: F401
    t = time.perf_counter()
    layers, fmts, loss, costs = zoo_table(n_layers, n_formats, seed)
    build = time.perf_counter() - t
    both, bits_budgets = zoo_budgets(costs)
    solver = get_solver("ilp") if time_limit is None else get_solver("ilp", time_limit=time_limit)
    print(f"\n## Exact ILP at scale (zoo table and cost model built in {build:.2f} s, outside the times below;"
          f" seconds = Problem construction + solve{'' if time_limit is None else f'; time_limit {time_limit:g} s'})")
    print("| layers × formats | budgets | seconds | objective | lower bound | gap |")
    print("|---|---|---|---|---|---|")
    rows = out.setdefault("ilp_scale", [])
    out["ilp_scale_table_seconds"] = build
    cases = [("three at once", both)] + [("avg_bits only", {"avg_bits": b}) for b in bits_budgets]
    for label, budgets in cases:
        text = ", ".join(f"{m} ≤ {v:.6g}" for m, v in budgets.items())
        t = time.perf_counter()
        problem = Problem(loss, costs, budgets)
        sol = solver.solve(problem)
        sec = time.perf_counter() - t
        rows.append(_row(label, text, len(layers), len(fmts), sec, sol))
        rows[-1]["feasible"] = bool(problem.feasible(sol.choice))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=10_000)
    ap.add_argument("--formats", type=int, default=16)
    ap.add_argument("--time-limit", type=float, default=None)
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    out: dict = {}
    bench_ilp_scale(out, args.layers, args.formats, time_limit=args.time_limit)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
