"""``bitplan search``: the engine run locally, no server.

Its flags become a job request in the API's names (``request_from_args``), the request becomes a
spec by the one mapping the server uses too (``search.spec.specs_from_request``), and the spec is
validated once (``search.validate.validate``) before torch loads; the pipeline takes the checked
spec on and only adds the checks that need the loaded model (budgets against its layers)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from service.cli.args import data_kwargs, fail, one_line
from service.cli_remote import GROUPS_NOT_GIVEN

if TYPE_CHECKING:  # the engine's imports stay lazy so --help and usage errors are instant
    from search.spec import SearchSpec
    from search.validate import Checked

# the flags that carry a request field under the field's own name
SAME_NAMES = ("target", "proxy", "solver", "refine", "refine_evals", "refine_patience", "refine_seconds", "refine_method", "judge_samples", "compute_dtype", "seed",
              "quantizer", "device", "offload", "runtime", "include_embeddings", "include_head")


def request_from_args(args) -> dict:
    """``bitplan search``'s flags as a job request in the API's names (``JobCreate``'s fields,
    plus ``include_embeddings``/``include_head``, which only a local run may change). Raises
    ValueError for a budget that is not METRIC=VALUE or a latency table that cannot be read."""
    from search.budgets import parse_budget
    formats = {"bits": args.bits, "symmetric": args.symmetric, "names": args.formats}
    if args.group_size is not GROUPS_NOT_GIVEN:
        formats["group_size"] = args.group_size  # None: one scale per output channel
    return {**{f: getattr(args, f) for f in SAME_NAMES},
            "budgets": dict(parse_budget(b) for b in args.budget), "formats": formats,
            "calibration": {"source": args.calib, "n_samples": args.n_calib, "seq_len": args.seq_len},
            "evaluation": {"source": args.eval, "n_samples": args.n_eval},
            "proxy_params": dict(args.proxy_param), "solver_params": dict(args.solver_param),
            "quantizer_params": dict(args.quantizer_param), "ties": [t for t in args.tie.split(",") if t],
            "latency_table": _latency_table(args.latency_table), **data_kwargs(args)}


def _latency_table(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"--latency-table {path}: {e}") from None


def spec_from_args(args) -> "SearchSpec":
    """The spec of ``bitplan search`` (its recipe is filled in once the model's kind is known)."""
    from search.spec import specs_from_request
    return specs_from_request(request_from_args(args), args.model)[0]


def cmd_search(args) -> int:
    from pydantic import ValidationError
    from search.validate import validate
    try:
        spec = spec_from_args(args)
        checked = validate(spec)  # the run's one validation: typed parameters and formats, before torch loads
        if not args.out.parent.exists():
            raise ValueError(f"--out {args.out}: folder {str(args.out.parent)!r} does not exist")
    except (ValueError, ValidationError) as e:
        return fail(one_line(e))
    from service.report import print_report, run_with_progress
    from workers.errors import USER_ERRORS
    if args.check:
        return _check_only(checked)
    try:
        result = run_with_progress(spec, checked)
    except USER_ERRORS as e:
        return fail(one_line(e))
    args.out.write_text(result.policy.to_json())
    if args.save_table:
        args.save_table.write_text(json.dumps(result.table.to_dict()))
    print_report(spec, result, args.out)
    print(f"wrote the policy to {args.out.resolve()}" + (f" and the table to {args.save_table.resolve()}"
                                                         if args.save_table else ""))
    return 0


def _check_only(checked: "Checked") -> int:
    from search.budgets import budget_range, feasible_range
    from workers.errors import USER_ERRORS
    from workers.pipeline import check_search
    spec = checked.specs[0]
    try:
        ld = check_search(spec, checked)
    except USER_ERRORS as e:
        return fail(one_line(e))
    print(f"ok: {spec.model}: {len(ld.layers)} layers, {len(ld.costs.formats)} formats, data {ld.plan.calib} → "
          f"calibration ({ld.plan.n_calib}), {ld.plan.eval} → evaluation ({ld.plan.n_eval})")
    for metric in sorted(spec.budgets):
        lo, hi = budget_range(ld.costs, metric, ld.ties)
        print(f"  budget {metric}={spec.budgets[metric]:g}: {feasible_range(lo, hi)}")
    return 0
