"""``bitplan`` command line. ``bitplan search`` runs the engine locally (no server); ``serve``,
``submit``, ``status``, ``policy`` and ``cancel`` work with a server (service/cli_remote.py).

Bad arguments print one line and exit with code 2; heavy imports (torch) happen only after the
arguments have been validated, so ``--help`` and usage errors are instant."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from search.defaults import DEFAULT_REFINE_EVALS, DEFAULT_REFINE_SECONDS, JUDGE_SAMPLES, RECIPES, REFINE_SECONDS
from service.cli_remote import GROUPS_NOT_GIVEN

if TYPE_CHECKING:  # the engine's imports stay lazy so --help and usage errors are instant
    from search.spec import SearchSpec

EXIT_USAGE = 2

EPILOG = """examples:
  bitplan search --model builtin:minilm-l6 --budget avg_bits=3.3 --bits 2,3,4,8 --group-size 64 --out policy.json
  bitplan search --model builtin:digits-cnn --budget avg_bits=3.3 --budget bops=3e7 --proxy hessian_trace --solver ilp
  bitplan search --model builtin:smollm2-135m --budget avg_bits=4.3125 --tie qkv,gate_up --n-eval 8
  bitplan search --model builtin:minilm-l6 --budget avg_bits=3.3 --quantizer gptq --quantizer-param damp=0.01

your own model (torch.export.save → net.pt2) and a folder of your images (class/ subfolders optional):
  # bitplan search --model ./net.pt2 --calib images:./photos --image-size 224 \\
  #     --image-mean 0.485,0.456,0.406 --image-std 0.229,0.224,0.225 --fold-batchnorm --budget avg_bits=4

default recipe (no --proxy/--solver): measured sensitivities → exact ILP → refine judged by
measured loss on calibration-source samples held apart from the table's.
budgets: avg_bits (bits/weight incl. scales), size_bytes, bops (Σ macs·w_bits·a_bits),
latency_ms (needs --latency-table).
"""


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors follow the CLI's rule for every bad input: one line on
    stderr, ``bitplan: error: …``, exit code 2 (no usage block; ``--help`` shows it)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"bitplan: error: {message}\n")


def _bits(text: str) -> list[int]:
    try:
        return [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers such as 2,3,4,8") from None


def _one_group(text: str) -> int | None:
    if text.lower() in ("none", "pc", "per-channel", "0"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give an integer (32, 64, 128) or 'per-channel'") from None


def _group(text: str) -> int | None | list[int | None]:
    """``64`` → 64; ``32,64,128`` → a menu of group sizes (formats are bits × group sizes)."""
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"{text!r}: give an integer (32, 64, 128) or 'per-channel'")
    groups = [_one_group(t) for t in parts]
    return groups[0] if len(groups) == 1 else groups


def _channels(text: str) -> list[float]:
    """``0.485,0.456,0.406`` → one number per channel (1 or 3)."""
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 or 3 comma-separated numbers (one per channel, [0, 1] "
                                         "pixel units), e.g. 0.485,0.456,0.406") from None
    if len(vals) not in (1, 3):
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 or 3 values (one per channel), got {len(vals)}; e.g. "
                                         "0.485,0.456,0.406")
    if any(v != v or v in (float("inf"), float("-inf")) for v in vals):
        raise argparse.ArgumentTypeError(f"{text!r}: give finite numbers")
    return vals


def _positive_channels(text: str) -> list[float]:
    vals = _channels(text)
    if any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"{text!r}: standard deviations must be positive, e.g. 0.229,0.224,0.225")
    return vals


def _pixels(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of pixels, e.g. 224") from None
    if not 8 <= n <= 8192:
        raise argparse.ArgumentTypeError(f"{text!r}: give 8..8192 pixels")
    return n


MODEL_HELP = ("export:<file.pt2> (torch.export.save; preferred for your own PyTorch model) | hf:<dir> (a Hugging "
              "Face folder of any task) | torchscript:<file> | a bare path (.pt2 → export, TorchScript zip → "
              "torchscript, folder with config.json → hf) | builtin:minilm-l6 | builtin:smollm2-135m | "
              "builtin:digits-cnn")
DATA_HELP = ("builtin text wikitext2-valid | wikitext2-test | tinyshakespeare | pydoc; digits (builtin images); "
             "images:DIR (a folder of images, class/ subfolders = labels) | tensors:FILE (.safetensors/.npz with "
             "'inputs', optional 'labels') | text:FILE (paragraphs) | jsonl:FILE ('text' per line) | dataset:DIR "
             "(datasets.save_to_disk; see --data-column) | file:PATH")


def add_data_args(s, remote: bool = False) -> None:
    """Image preprocessing, dataset columns and BatchNorm folding: the same flags for ``search``
    and ``submit``."""
    s.add_argument("--image-size", type=_pixels, metavar="PX",
                   help="image models: center-crop size (default: the HF processor config or the model's declared input)")
    s.add_argument("--resize", type=_pixels, metavar="PX",
                   help="image models: resize the shorter side to this before the crop (default image size / 0.875)")
    s.add_argument("--image-mean", type=_channels, metavar="M[,M,M]",
                   help="image models: per-channel mean in [0, 1] pixel units, e.g. 0.485,0.456,0.406 (torchvision's)")
    s.add_argument("--image-std", type=_positive_channels, metavar="S[,S,S]",
                   help="image models: per-channel std in [0, 1] pixel units, e.g. 0.229,0.224,0.225")
    s.add_argument("--data-column", metavar="NAME", help="dataset:DIR sources: the input column (default image/img/"
                                                          "pixel_values/text)")
    s.add_argument("--label-column", metavar="NAME", help="dataset:DIR sources: the label column (default label/labels; "
                                                           "labels are optional)")
    s.add_argument("--fold-batchnorm", action="store_true", default=None if remote else False,
                   help="fold each BatchNorm into the conv before it before quantizing (recorded in the policy)")


def data_kwargs(args) -> dict:
    """The preprocessing fields given on the command line (unset ones left out)."""
    out = {k: getattr(args, k) for k in ("image_size", "resize", "image_mean", "image_std", "data_column",
                                          "label_column") if getattr(args, k) is not None}
    if args.fold_batchnorm:
        out["fold_batchnorm"] = True
    return out


def _kv(text: str) -> tuple[str, object]:
    k, sep, v = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        return k, json.loads(v)
    except ValueError:
        return k, v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bitplan", description="Mixed-precision quantization policies under real budgets.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("search", help="find a policy for a model and budget (runs locally)", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--model", required=True, help=MODEL_HELP)
    s.add_argument("--budget", action="append", required=True, metavar="METRIC=VALUE",
                   help="avg_bits=3.3, size_bytes=…, bops=…, latency_ms=…; repeat for several (all must hold)")
    s.add_argument("--bits", type=_bits, default=[2, 3, 4, 8], help="candidate bit-widths, 2..8, 16 = keep float (default 2,3,4,8)")
    s.add_argument("--group-size", type=_group, default=GROUPS_NOT_GIVEN,
                   help="scale group size along the input dim, or 'per-channel' (also 0 or none); several (e.g. 32,64,128) give every "
                        "bit-width in each group size (default: the recipe's menu 32,64,128; uniform baselines use 64)")
    s.add_argument("--symmetric", action="store_true", help="symmetric quantization (no zero points); default asymmetric")
    s.add_argument("--proxy", help="hessian_trace | fisher | orthogonality | output_error | measured")
    s.add_argument("--proxy-param", action="append", type=_kv, default=[], metavar="KEY=VALUE", help="proxy parameter, e.g. tol=0.05")
    s.add_argument("--solver", help="ilp | lp | convex | pareto | joint (APQ: bits + pruning, predictor-guided)")
    s.add_argument("--solver-param", action="append", type=_kv, default=[], metavar="KEY=VALUE",
                   help="joint solver parameter, e.g. ratios=[0,0.25,0.5] generations=20")
    s.add_argument("--quantizer", choices=["rtn", "gptq"], default="rtn",
                   help="weight quantizer that every measurement, the evaluation and the policy assume: rtn "
                        "(round to nearest, default) or gptq (error-compensating; Hessians from calibration-source "
                        "samples apart from the calibration samples)")
    s.add_argument("--quantizer-param", action="append", type=_kv, default=[], metavar="KEY=VALUE",
                   help="gptq parameter: damp=0.01 (fraction of the mean Hessian diagonal), act_order=true, block_size=128, "
                        "n_samples=N (calibration-source samples for the Hessians, drawn apart from the calibration "
                        "samples; default 256 sentences / 32 windows / 512 images)")
    s.add_argument("--refine", dest="refine", action="store_true", default=None, help="refine with measured loss (default with the recipe)")
    s.add_argument("--no-refine", dest="refine", action="store_false")
    s.add_argument("--refine-evals", type=int, default=DEFAULT_REFINE_EVALS,
                   help=f"candidate policies refine may judge (default {DEFAULT_REFINE_EVALS})")
    s.add_argument("--refine-seconds", type=float, default=None, metavar="S",
                   help=f"wall time refine may spend; it stops at whichever of this and --refine-evals comes first "
                        f"(default " + ", ".join(f"{v:g} for a {k}" for k, v in REFINE_SECONDS.items())
                        + f", {DEFAULT_REFINE_SECONDS:g} otherwise)")
    s.add_argument("--refine-method", choices=["moves", "loop"], default=None,
                   help="moves: one-step moves judged one by one; loop: measure the cells around the policy at the "
                        "operating point, re-solve and judge, then moves with the time left (default: the recipe's, "
                        + ", ".join(f"{m} for {k}" for k, (_, m) in RECIPES.items()) + ", moves otherwise)")
    s.add_argument("--judge-samples", type=int, default=None, metavar="N",
                   help="calibration-source samples, apart from the calibration ones, that judge refine's moves "
                        "(default by model kind: " + ", ".join(f"{k} {v}" for k, v in JUDGE_SAMPLES.items())
                        + "; 0 = the calibration samples)")
    s.add_argument("--device", default="auto",
                   help="where the forward passes run: auto (a GPU when there is one, else the CPU), cpu, cuda, cuda:N, mps")
    s.add_argument("--offload", dest="offload", action="store_true", default=None,
                   help="stream the model's blocks through the GPU one at a time (default: only when it does not fit)")
    s.add_argument("--no-offload", dest="offload", action="store_false")
    s.add_argument("--calib", help="calibration data (default: the model's): " + DATA_HELP)
    s.add_argument("--eval", help="held-out evaluation data (same choices; default: samples of --calib apart from the "
                                  "calibration ones); never overlaps calibration")
    s.add_argument("--n-calib", type=int, help="calibration samples (sentences, token windows or images)")
    s.add_argument("--n-eval", type=int, help="evaluation samples")
    s.add_argument("--seq-len", type=int, help="tokens per sample")
    add_data_args(s)
    s.add_argument("--tie", default="", help="tie fused layers to one format: qkv, gate_up, experts (all experts of one MoE block)")
    s.add_argument("--runtime", choices=["vllm", "sglang", "none"],
                   help="the runtime the policy is for; vllm/sglang tie q/k/v, gate/up and the experts of each MoE "
                        "block (they fuse them)")
    s.add_argument("--include-embeddings", action="store_true", help="also quantize embeddings")
    s.add_argument("--include-head", action="store_true", help="also quantize the LM head")
    s.add_argument("--latency-table", type=Path, help="JSON {layer: {format label or bits: ms}} for latency_ms budgets")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, default=Path("policy.json"),
                   help="where to write the bitplan.policy/v1 JSON (default ./policy.json; the path is printed)")
    s.add_argument("--save-table", type=Path, help="also write the sensitivity table (JSON)")
    s.add_argument("--check", action="store_true",
                   help="only check the request: load the model, validate every option and budget (printing the "
                        "feasible range of each budget metric) and stop before any calibration")
    e = sub.add_parser("evolve", help="evolve a proxy program on a model (EMQ) and compare it with the built-in proxies")
    e.add_argument("--model", required=True)
    e.add_argument("--name", required=True, help="store the winner as evolved:<name> (letters, digits, _ . -)")
    e.add_argument("--bits", type=_bits, default=[2, 3, 4, 8])
    e.add_argument("--group-size", type=_group, default=64)
    e.add_argument("--n-policies", type=int, default=50, help="ground-truth policies to measure (default 50)")
    e.add_argument("--population", type=int, default=32)
    e.add_argument("--generations", type=int, default=12)
    e.add_argument("--n-calib", type=int)
    e.add_argument("--compare", default="hessian_trace,fisher,orthogonality,output_error,measured",
                   help="built-in proxies to compare on the same held-out policies ('' for none)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", type=Path, help="write the comparison as JSON")
    x = sub.add_parser("export", help="write a policy in a quantizer's config format")
    x.add_argument("policy", type=Path, help="a bitplan.policy/v1 JSON file")
    x.add_argument("--format", required=True,
                   help="gptqmodel | compressed-tensors | llmcompressor-recipe | torchao | llamacpp | modelopt")
    x.add_argument("--out", type=Path, help="output file (default: standard output)")
    m = sub.add_parser("import-measurement", help="solve an exllamav2 measurement.json with bitplan's exact ILP")
    m.add_argument("measurement", type=Path, help="measurement.json written by exllamav2's convert.py")
    m.add_argument("--budget", action="append", default=[], metavar="METRIC=VALUE",
                   help="size_bytes=… or avg_bits=… (avg_bits needs --model); without a budget, summarise the table")
    m.add_argument("--model", help="the measured checkpoint folder (hf:<dir> or <dir>); weight counts come from its "
                                   "safetensors headers, no weights are loaded")
    m.add_argument("--out", type=Path, help="write the imported table (and the solution) as JSON")
    from service.cli_remote import add_commands
    add_commands(sub, _bits, _group, _kv, add_data_args)
    return p


def fail(message: str) -> int:
    print(f"bitplan: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def spec_from_args(args) -> "SearchSpec":
    from search.budgets import parse_budget
    from search.layers import runtime_ties
    from search.spec import SearchSpec
    budgets = dict(parse_budget(b) for b in args.budget)
    latency = None
    if args.latency_table:
        try:
            latency = json.loads(args.latency_table.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"--latency-table {args.latency_table}: {e}") from None
    extra = {} if args.group_size is GROUPS_NOT_GIVEN else {"group_size": args.group_size}
    return SearchSpec(model=args.model, budgets=budgets, bits=args.bits, **extra,
                      symmetric=args.symmetric, proxy=args.proxy, proxy_params=dict(args.proxy_param), solver=args.solver,
                      solver_params=dict(args.solver_param),
                      refine=args.refine, refine_evals=args.refine_evals,
                      refine_seconds=args.refine_seconds, refine_method=args.refine_method, judge_samples=args.judge_samples, calib=args.calib, eval=args.eval,
                      n_calib=args.n_calib, n_eval=args.n_eval, seq_len=args.seq_len, seed=args.seed,
                      ties=runtime_ties(args.runtime, [t for t in args.tie.split(",") if t]),
                      include_embeddings=args.include_embeddings,
                      include_head=args.include_head, latency_table=latency,
                      quantizer=args.quantizer, quantizer_params=dict(args.quantizer_param),
                      device=args.device, offload=args.offload, **data_kwargs(args))


def validation_line(e: dict) -> str:
    """One pydantic error as a person would say it: the field and what it must be, without the
    library's prefixes ("Value error, …", "Field required")."""
    where = ".".join(str(x) for x in e.get("loc", ()))
    kind, msg = e.get("type", ""), str(e.get("msg", "is invalid"))
    if kind == "missing":
        msg = "is missing (required)"
    elif kind == "extra_forbidden":
        msg = "is not a known field"
    else:
        msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if msg.startswith("Input should be "):
            msg = "must be " + msg.removeprefix("Input should be ")
    return f"{where}: {msg}" if where else msg


def _one_line(exc: Exception) -> str:
    from pydantic import ValidationError
    if isinstance(exc, ValidationError):
        return validation_line(exc.errors(include_url=False)[0])
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def cmd_search(args) -> int:
    from pydantic import ValidationError
    from search.validate import static_check
    try:
        spec = spec_from_args(args)
        static_check(spec)  # typed proxy/solver/quantizer parameters and formats, before torch loads
        if not args.out.parent.exists():
            raise ValueError(f"--out {args.out}: folder {str(args.out.parent)!r} does not exist")
    except (ValueError, ValidationError) as e:
        return fail(_one_line(e))
    from service.report import run_with_progress, print_report
    from workers.errors import USER_ERRORS
    if args.check:
        return _check_only(spec)
    try:
        result = run_with_progress(spec)
    except USER_ERRORS as e:
        return fail(_one_line(e))
    args.out.write_text(result.policy.to_json())
    if args.save_table:
        args.save_table.write_text(json.dumps(result.table.to_dict()))
    print_report(spec, result, args.out)
    print(f"wrote the policy to {args.out.resolve()}" + (f" and the table to {args.save_table.resolve()}"
                                                         if args.save_table else ""))
    return 0


def _check_only(spec) -> int:
    from search.budgets import budget_range, feasible_range
    from workers.errors import USER_ERRORS
    from workers.pipeline import check_search
    try:
        ld = check_search(spec)
    except USER_ERRORS as e:
        return fail(_one_line(e))
    print(f"ok: {spec.model}: {len(ld.layers)} layers, {len(ld.costs.formats)} formats, data {ld.plan.calib} → "
          f"calibration ({ld.plan.n_calib}), {ld.plan.eval} → evaluation ({ld.plan.n_eval})")
    for metric in sorted(spec.budgets):
        lo, hi = budget_range(ld.costs, metric, ld.ties)
        print(f"  budget {metric}={spec.budgets[metric]:g}: {feasible_range(lo, hi)}")
    return 0


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
            raise ValueError(f"{args.policy} is not a complete bitplan.policy/v1 file: {_one_line(e)}") from None
        out = export(policy, args.format)
        if args.out and not args.out.parent.exists():
            raise ValueError(f"--out {args.out}: folder {str(args.out.parent)!r} does not exist")
    except ValueError as e:
        return fail(_one_line(e))
    if args.out:
        args.out.write_text(out.text)
        print(f"wrote {args.out} ({args.format})")
    else:
        sys.stdout.write(out.text)
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
        return fail(_one_line(e))
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
        return fail(_one_line(e))
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
            return fail(_one_line(e))
    print_table(res)
    if args.out:
        args.out.write_text(to_json(res))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "search":
        return cmd_search(args)
    if args.command == "evolve":
        return cmd_evolve(args)
    if args.command == "export":
        return cmd_export(args)
    if args.command == "import-measurement":
        return cmd_import_measurement(args)
    from service.cli_remote import run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
