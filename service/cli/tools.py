"""The local commands besides ``search``: ``export`` (a policy in a quantizer's config format),
``import-measurement`` (an exllamav2 measurement solved by the exact ILP) and ``evolve`` (a
proxy program evolved on a model and compared with the built-in proxies)."""
from __future__ import annotations

import json
import sys

from service.cli.args import fail, one_line


def cmd_export(args) -> int:
    from pydantic import ValidationError
    from search.exports import export
    from search.policy import Policy
    try:
        if not args.policy.is_file():
            raise ValueError(f"{args.policy}: no such file")
        try:
            policy = Policy.from_json(args.policy.read_text())
        except ValidationError as e:
            raise ValueError(f"{args.policy} is not a complete bitplan.policy/v1 file: {one_line(e)}") from None
        if args.model is not None:
            return _export_artifact(policy, args)
        if args.format == "gguf":
            raise ValueError("--format gguf writes the quantized model file: give --model REF (the float model the "
                             "policy was found for) and --out model.gguf")
        out = export(policy, args.format)
        if args.out and not args.out.parent.exists():
            raise ValueError(f"--out {args.out}: folder {str(args.out.parent)!r} does not exist")
    except ValueError as e:
        return fail(one_line(e))
    if args.out:
        args.out.write_text(out.text)
        print(f"wrote {args.out} ({args.format})")
    else:
        sys.stdout.write(out.text)
    return 0


def _export_artifact(policy, args) -> int:
    """``--model``: the quantized files themselves (a GGUF file, a compressed-tensors checkpoint)."""
    from workers.artifacts import ARTIFACTS
    if args.format not in ARTIFACTS:
        raise ValueError(f"--model writes quantized files for --format {' or '.join(ARTIFACTS)}; {args.format} is a "
                         "config: leave out --model")
    if args.out is None:
        raise ValueError(f"--format {args.format} --model writes files: give --out (a .gguf file or a directory)")
    if not args.out.parent.exists():
        raise ValueError(f"--out {args.out}: folder {str(args.out.parent)!r} does not exist")
    from search.exports.base import ExportError
    from workers.artifacts import write_artifact
    from workers.errors import USER_ERRORS
    try:
        summary = write_artifact(policy, args.format, args.model, args.out, args.float_type)
    except (ExportError, *USER_ERRORS) as e:
        return fail(one_line(e))
    size = summary.get("file_bytes") or summary.get("total_bytes")
    print(f"wrote {args.out} ({args.format}{f', {size / 1e6:.1f} MB' if size else ''})")
    return 0


def cmd_import_measurement(args) -> int:
    from rich.console import Console
    from rich.table import Table
    from search.budgets import parse_budget
    from search.measurement import attach_numel, load_measurement, safetensors_numel, solve_measurement
    try:
        budgets = dict(parse_budget(b) for b in args.budget)
        if args.out and not args.out.parent.exists():
            raise ValueError(f"--out {args.out}: folder {str(args.out.parent)!r} does not exist")
        table = load_measurement(args.measurement)
        if args.model:
            attach_numel(table, safetensors_numel(args.model.removeprefix("hf:")))
        solution = solve_measurement(table, budgets) if budgets else None
    except ValueError as e:
        return fail(one_line(e))
    con = Console()
    n_opts = sorted({len(o) for o in table.options})
    errs = [o.error for opts in table.options for o in opts]
    con.print(f"{args.measurement}: {len(table.modules)} modules, {'/'.join(map(str, n_opts))} options each, "
              f"1 − accuracy from {min(errs):.3g} to {max(errs):.3g}", soft_wrap=True)  # a path must stay whole
    if solution:
        t = Table(title=f"exllamav2 options chosen by ilp under {', '.join(f'{k}≤{v:g}' for k, v in budgets.items())}")
        for col in ("module", "option", "bpw", "1 − accuracy"):
            t.add_column(col)
        for name, o in solution["modules"].items():
            t.add_row(name, o["desc"][:70], "—" if o["bpw"] is None else f"{o['bpw']:.3f}", f"{o['error']:.4g}")
        con.print(t)
        cost = solution["cost"]
        con.print(f"Σ(1 − accuracy) {solution['error_sum']:.6g} (lower bound {solution['solver']['lower_bound']:.6g}, "
                  f"gap {solution['solver']['gap']:.2g}); " + ", ".join(f"{k} {v:.6g}" for k, v in cost.items()))
    if args.out:
        args.out.write_text(json.dumps({"table": table.to_dict(), "solution": solution}, indent=1))
        con.print(f"wrote {args.out}")
    return 0


def cmd_evolve(args) -> int:
    from pydantic import ValidationError
    compare = tuple(c for c in args.compare.split(",") if c)
    params = {"n_policies": args.n_policies, "population": args.population, "generations": args.generations}
    try:
        from proxies.registry import PROXIES, get_proxy
        get_proxy("evolved", name=args.name, **params)  # parameter errors before any work
        bad = [c for c in compare if c not in PROXIES or c == "evolved"]
        if bad:
            raise ValueError(f"--compare: unknown built-in proxy {bad[0]!r}")
        if args.out and not args.out.parent.exists():
            raise ValueError(f"--out {args.out}: folder {str(args.out.parent)!r} does not exist")
    except (ValueError, ValidationError) as e:
        return fail(one_line(e))
    from rich.progress import Progress
    from workers.errors import USER_ERRORS
    from workers.evolution import evolve_and_compare, print_table, to_json
    with Progress(transient=True) as bar:
        task = bar.add_task("evolve", total=1.0)
        try:
            res = evolve_and_compare(args.model, args.bits, args.group_size, args.name, params, compare,
                                     n_calib=args.n_calib, seed=args.seed,
                                     progress=lambda ph, f, m: bar.update(task, completed=f, description=f"{ph}: {m[:70]}"))
        except USER_ERRORS as e:
            return fail(one_line(e))
    print_table(res)
    if args.out:
        args.out.write_text(to_json(res))
    return 0
