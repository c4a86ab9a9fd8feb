"""EMQ bench: evolve a proxy on each model and compare its held-out Kendall τ / Spearman ρ with
every built-in proxy on the same held-out ground-truth policies. Prints tables, writes JSON.

    python bench/evolve.py [--models digits,minilm] [--generations 12] [--population 32]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.evolution import evolve_and_compare  # noqa: E402

MODELS = {"digits": ("builtin:digits-cnn", None), "minilm": ("builtin:minilm-l6", None),
          "smollm2": ("builtin:smollm2-135m", 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="digits,minilm")
    ap.add_argument("--generations", type=int, default=12)
    ap.add_argument("--population", type=int, default=32)
    ap.add_argument("--n-policies", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench/results/evolve.json"))
    args = ap.parse_args()
    os.environ.setdefault("BITPLAN_EVOLVED_DIR", tempfile.mkdtemp(prefix="bitplan-evolved-"))
    print(f"machine: {platform.machine()}  {os.cpu_count()} cpus; programs stored in {os.environ['BITPLAN_EVOLVED_DIR']}")
    out = {}
    for key in args.models.split(","):
        ref, n_calib = MODELS[key]
        res = evolve_and_compare(ref, [2, 3, 4, 8], 64, f"bench-{key}-s{args.seed}",
                                 {"n_policies": args.n_policies, "population": args.population,
                                  "generations": args.generations}, n_calib=n_calib, seed=args.seed,
                                 builtin_params={"hessian_trace": {"max_probes": 16, "min_probes": 8}},
                                 progress=lambda ph, f, m: None)
        out[key] = res
        print(f"\n### {ref}: {res['layers']} layers × {len(res['formats'])} formats; {res['ground_truth_policies']} "
              f"ground-truth policies, {res['holdout']} held out")
        print("| proxy | Kendall τ (held-out) | Spearman ρ (held-out) | τ (train) | seconds |")
        print("|---|---|---|---|---|")
        for r in res["rows"]:
            tr = "—" if r["tau_train"] is None else f"{r['tau_train']:.3f}"
            print(f"| {r['proxy']} | {r['tau_holdout']:.3f} | {r['spearman_holdout']:.3f} | {tr} | {r['seconds']:.1f} |")
        print(f"evolved program: `{res['rows'][0]['formula']}`")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
