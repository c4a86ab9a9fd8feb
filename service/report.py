"""Rich progress bars for the pipeline's phases and the result table the CLI prints."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from search.spec import SearchSpec
from workers.pipeline import SearchResult, run_search

console = Console(stderr=True)


def run_with_progress(spec: SearchSpec) -> SearchResult:
    with Progress(TextColumn("[bold]{task.fields[phase]:<11}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), TextColumn("{task.description}"), console=console, transient=False) as prog:
        tasks: dict[str, int] = {}

        def update(phase: str, fraction: float, message: str) -> None:
            if phase not in tasks:
                tasks[phase] = prog.add_task(message, total=1.0, phase=phase)
            prog.update(tasks[phase], completed=fraction, description=message[:60])

        try:
            return run_search(spec, update)
        except BaseException:
            # the error is reported as one line on stderr: take the bars away first (and skip the
            # blank line rich's stop() prints on a non-terminal)
            prog.live.transient = True
            prog.live.stop()
            prog.disable = True
            raise


def print_report(spec: SearchSpec, result: SearchResult, out: Path) -> None:
    pol, out_console = result.policy, Console()
    formats = Counter()
    weights = Counter()
    for l in pol.layers:
        key = l.format.label
        formats[key] += 1
        weights[key] += l.numel
    for name in pol.float_layers:
        formats["fp16"] += 1
    total = sum(weights.values()) or 1
    t = Table(title=f"Policy for {spec.model} (written to {out})")
    t.add_column("format"); t.add_column("layers", justify="right"); t.add_column("share of weights", justify="right")
    for key in sorted(formats):
        t.add_row(key, str(formats[key]), f"{100 * weights[key] / total:.1f}%")
    out_console.print(t)

    c = Table(title="Cost under every budget metric")
    c.add_column("metric"); c.add_column("policy", justify="right"); c.add_column("budget", justify="right")
    for m, v in pol.cost.items():
        if v is not None:
            c.add_row(m, f"{v:,.4f}" if m == "avg_bits" else f"{v:,.0f}" if v > 1000 else f"{v:.4g}",
                      f"{pol.budget[m]:g}" if m in pol.budget else "—")
    out_console.print(c)

    m = pol.measured
    qz = pol.quantizer
    how = "RTN" if qz.method == "rtn" else (f"GPTQ (damp {qz.damp:g}, act-order {'on' if qz.act_order else 'off'}, "
                                            f"Hessians from {qz.hessian_samples} samples)")
    q = Table(title=f"Quality: {m.metric} on held-out data ({spec.eval or 'default eval split'}), every policy quantized with {how}")
    q.add_column("model"); q.add_column(m.metric, justify="right")
    q.add_row("float", f"{m.float:.5g}")
    for key, v in m.uniform.items():
        q.add_row(f"uniform {key}-bit" if key.isdigit() else f"uniform {key}", f"{v:.5g}")
    if result.unrefined is not None:
        q.add_row(f"{pol.predicted.proxy}+{pol.solver.name} (before refine)", f"{result.unrefined[m.metric]:.5g}")
    q.add_row(f"[bold]bitplan policy[/] ({pol.cost['avg_bits']:.4f} avg bits)", f"[bold]{m.value:.5g}")
    out_console.print(q)
    gap = "n/a" if pol.solver.gap is None else f"{pol.solver.gap:.2e}"
    out_console.print(f"predicted loss increase ({pol.predicted.proxy}): {pol.predicted.loss_increase:.5g}   "
                      f"solver {pol.solver.name}: objective {pol.solver.objective:.5g}, gap {gap}")
    if pol.refine:
        r = pol.refine
        judged = f"on {r['judge_samples']} samples, {r['judge_source']}" if "judge_samples" in r else "on calibration"
        early = f", {r['stopped_early']} stopped early" if r.get("stopped_early") else ""
        out_console.print(f"refine: judge loss ({judged}) {r['start_measured']:.5g} → {r['final_measured']:.5g} "
                          f"({r['accepted']} moves accepted, {r['evals']} evaluations{early})")
    out_console.print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()))
