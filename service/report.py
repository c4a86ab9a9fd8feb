"""Rich progress bars for the pipeline's phases and the result table the CLI prints."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from search.spec import SearchSpec
from search.validate import Checked
from workers.pipeline import SearchResult, run_search

QUALITY_EXTRAS = ("perplexity", "top1_agreement")  # shown beside the job's metric when the task reports them

console = Console(stderr=True)


def run_with_progress(spec: SearchSpec, checked: Checked | None = None) -> SearchResult:
    """``run_search`` with a progress bar per phase; ``checked``: the spec's validation (the CLI
    validates before torch loads, so the pipeline does not check it again)."""
    with Progress(TextColumn("[bold]{task.fields[phase]:<11}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), TextColumn("{task.description}"), console=console, transient=False) as prog:
        tasks: dict[str, int] = {}

        def update(phase: str, fraction: float, message: str) -> None:
            if phase not in tasks:
                tasks[phase] = prog.add_task(message, total=1.0, phase=phase)
            prog.update(tasks[phase], completed=fraction, description=message[:60])

        try:
            return run_search(spec, update, checked=checked)
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
    # beside the metric: its standard error (so a reader sees whether two rows differ) and the
    # extras the task reports for every row (perplexity, top-1 agreement with the float model)
    se = "kl_stderr" if "kl_stderr" in m.extra else None
    extras = [k for k in QUALITY_EXTRAS if k in m.extra]
    q.add_column("model"); q.add_column(m.metric, justify="right")
    if se:
        q.add_column("± s.e.", justify="right")
    for k in extras:
        q.add_column(k.replace("_", " "), justify="right")

    def row(name: str, value: float, metrics: dict | None) -> None:
        metrics = metrics or {}
        cells = [name, f"{value:.5g}"]
        if se:
            cells.append(f"{metrics[se]:.2g}" if se in metrics and metrics[se] == metrics[se] else "")
        cells += [f"{metrics[k]:.5g}" if k in metrics else "" for k in extras]
        q.add_row(*cells)

    base = result.baselines or {}
    row("float", m.float, base.get("float"))
    for key, v in m.uniform.items():
        row(f"uniform {key}-bit" if key.isdigit() else f"uniform {key}", v, base.get("uniform", {}).get(key))
    if result.unrefined is not None:
        row(f"{pol.predicted.proxy}+{pol.solver.name} (before refine)", result.unrefined[m.metric], result.unrefined)
    row(f"[bold]bitplan policy[/] ({pol.cost['avg_bits']:.4f} avg bits)", m.value, {**m.extra, m.metric: m.value})
    out_console.print(q)
    gap = "n/a" if pol.solver.gap is None else f"{pol.solver.gap:.2e}"
    out_console.print(f"predicted loss increase ({pol.predicted.proxy}): {pol.predicted.loss_increase:.5g}   "
                      f"solver {pol.solver.name}: objective {pol.solver.objective:.5g}, gap {gap}")
    p = pol.predicted
    if p.measured_increase is not None:
        out_console.print(f"measured on the calibration data: {p.measured_increase:.5g} over the {p.reference} model "
                          f"(the table predicted {p.loss_increase:.5g})")
    if pol.refine:
        r = pol.refine
        judged = f"on {r['judge_samples']} samples, {r['judge_source']}" if "judge_samples" in r else "on calibration"
        early = f", {r['stopped_early']} stopped early" if r.get("stopped_early") else ""
        out_console.print(f"refine: judge loss ({judged}) {r['start_measured']:.5g} → {r['final_measured']:.5g} "
                          f"({r['accepted']} moves accepted, {r['evals']} evaluations{early}, stopped by "
                          f"{r.get('stopped_by', 'evals')})")
        lp = r.get("loop")
        if lp:
            began = "" if lp.get("began", "uniform") == "uniform" else ", begun at the solver's policy (judged better)"
            out_console.print(f"loop: uniform {lp['start']}{began}, judge loss {lp['start_measured']:.5g} → "
                              f"{lp['final_measured']:.5g} in {lp.get('n_rounds', len(lp['rounds']))} rounds, {lp['measured_cells']} cells "
                              f"measured at the current policy (stopped by {lp['stopped_by']})")
        u = r.get("uniform_check")
        if u and u["judged"]:
            names = ", ".join(j["format"] for j in u["judged"])
            out_console.print(f"uniform check: {u['chosen']} judged better than the mixed policy, so the policy is uniform"
                              if u["chosen"] else f"uniform check: the mixed policy beats every uniform policy that fits ({names})")
    out_console.print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()))
