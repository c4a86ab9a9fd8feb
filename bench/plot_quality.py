"""Trade-off plot from bench/results/quality*.json: held-out metric vs avg bits for every
method, uniform policies and the float model on the same axes, one panel per model.

    python bench/plot_quality.py [--out bench/results/quality.png]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

try:
    import matplotlib
except ImportError:  # the bench extra, not an engine dependency
    raise SystemExit("plot_quality.py needs matplotlib: pip install -e '.[bench]' (or run make bench)") from None

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", nargs="*", type=Path, default=sorted(Path("bench/results").glob("quality*.json")))
    ap.add_argument("--out", type=Path, default=Path("bench/results/quality.png"))
    args = ap.parse_args()
    models = [m for f in args.results for m in json.loads(f.read_text())]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, m in zip(axes[0], models):
        budgets = [r["budget"] for r in m["rows"]]
        methods = [k for k in m["rows"][0] if k not in ("budget", "uniform", "refine_seconds", "calibration loss")]
        for k in methods:
            style = {"lw": 2.5, "color": "black"} if k.startswith("recipe") else {"lw": 1, "alpha": 0.8}
            ax.plot(budgets, [r[k] for r in m["rows"]], marker="o", label=k, **style)
        uni = [(float(k.split()[1].split("-")[0]), v) for k, v in m["baselines"].items() if k.startswith("uniform")]
        ubits = {3: budgets[0], 4: budgets[-1]}
        pts = [(ubits[b], v) for b, v in uni if b in ubits]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker="s", s=80, color="red", zorder=5, label="uniform (g64)")
        log = m["metric"] != "accuracy"
        fl = m["baselines"]["float"]
        if not (log and fl <= 0):  # a zero float loss has no place on a log axis: say it in the title
            ax.axhline(fl, color="gray", ls="--", label="float")
        ax.set_title(f"{m['model']} ({m['layers']} layers)" + (f", float = {fl:g}" if log and fl <= 0 else "")
                     + (f"\n{m['menu']}" if "menu" in m else ""), fontsize=10)
        ax.set_xlabel("avg bits per weight (scales and zero points included)")
        ax.set_ylabel(m["metric"])
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
