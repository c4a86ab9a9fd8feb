"""What each remote command does, through the SDK (``service.client``). ``run`` maps every
failure to one line and an exit code: bad arguments and 4xx answers exit 2, an unreachable
server or a failed job exits 1."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from service.cli_remote.parser import GROUPS_NOT_GIVEN
from service.cli_remote.request import budgets, describe_data, request_data
from service.jobstate import JobStatus

EXIT_USAGE, EXIT_UNAVAILABLE = 2, 1
MODEL_REFS = ("builtin:", "hf:", "export:", "torchscript:")


def run(args) -> int:
    import httpx

    from service.client import BitplanError, Client, JobFailed
    try:
        if args.command == "serve":
            return _serve(args)
        with Client(args.url, args.token) as c:
            return {"submit": _submit, "status": _status, "policy": _policy, "cancel": _cancel, "solve": _solve,
                    "data": _data_command}[args.command](c, args)
    except httpx.TransportError as e:
        return _fail(f"cannot reach the bitplan server at {args.url} ({type(e).__name__}); start one with "
                     "`bitplan serve` or pass --url", EXIT_UNAVAILABLE)
    except JobFailed as e:
        return _fail(f"job {e.job.id} {e.job.status}: {e.job.error or e.job.message}", EXIT_UNAVAILABLE)
    except BitplanError as e:
        return _fail(e.message, EXIT_USAGE if e.status < 500 else EXIT_UNAVAILABLE)
    except ValueError as e:
        return _fail(str(e).splitlines()[0])


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"bitplan: error: {message}", file=sys.stderr)
    return code


def _serve(args) -> int:
    import uvicorn

    from service.api import create_app
    from service.config import Settings
    settings = Settings()
    where = f"http://{args.host}:{args.port}"
    print(f"bitplan: serving {where}  (dashboard {where}/, API docs {where}/docs, database "
          f"{settings.database_url.split('@')[-1]})", flush=True)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _resolve_model(c, ref: str) -> str:
    if ref.startswith(MODEL_REFS):
        return c.register_model(ref).id
    if Path(ref).is_file():
        if ref.lower().endswith(".pt2"):
            return c.register_model(export=ref).id
        return c.register_model(torchscript=ref).id
    return ref


def _data_command(c, args) -> int:
    if args.data_command == "show":
        rec = c.data(args.id)
        print(f"{rec.source}: {describe_data(rec)} ({rec.name or 'unnamed'})")
        return 0
    if not args.path.exists():
        return _fail(f"{args.path}: no such file or folder")
    rec = c.upload_data(args.path, kind=args.kind)
    print(f"{rec.source}")
    print(f"  {describe_data(rec)}; use it as --calib {rec.source} (or calibration={{\"source\": \"{rec.source}\"}})")
    return 0


def _formats(args) -> dict:
    formats = {} if args.bits is None else {"bits": args.bits}
    if args.group_size is not GROUPS_NOT_GIVEN:
        formats["group_size"] = args.group_size  # None = per-channel
    if args.symmetric:
        formats["symmetric"] = True
    return formats


def _submit(c, args) -> int:
    from pydantic import ValidationError

    from service.cli.args import data_kwargs  # on use: service.cli imports this package at its import
    try:
        points, formats, extra = budgets(args), _formats(args), data_kwargs(args)
    except (ValueError, ValidationError) as e:
        return _fail(str(e).splitlines()[0])
    model_id = _resolve_model(c, args.model)
    calib, evaluation = request_data(c, args.calib, "--calib"), request_data(c, args.eval, "--eval")
    if args.n_calib:
        calib["n_samples"] = args.n_calib
    if args.n_eval:
        evaluation["n_samples"] = args.n_eval
    if args.seq_len:
        calib["seq_len"] = args.seq_len
    try:
        job = c.submit(model_id, points, idempotency_key=args.idempotency_key, formats=formats or None,
                       proxy=args.proxy, proxy_params=dict(args.proxy_param) or None, solver=args.solver,
                       solver_params=dict(args.solver_param) or None, runtime=args.runtime,
                       quantizer=args.quantizer, quantizer_params=dict(args.quantizer_param) or None,
                       refine=args.refine, refine_evals=args.refine_evals,
                       refine_patience=args.refine_patience, refine_seconds=args.refine_seconds,
                       refine_method=args.refine_method,
                       judge_samples=args.judge_samples, compute_dtype=args.compute_dtype, device=args.device,
                       offload=args.offload,
                       calibration=calib or None, evaluation=evaluation or None, seed=args.seed,
                       ties=[t for t in args.tie.split(",") if t] or None, **extra)
    except ValidationError as e:
        err = e.errors()[0]
        return _fail(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}")
    print(f"job {job.id} {job.status}", flush=True)
    return _finish(c, job, args) if args.wait else 0


def _finish(c, job, args) -> int:
    """``submit --wait``: follow the job, show each policy, write the first to ``--out``."""
    job = follow(c, job.id)
    for pid in job.policy_ids:
        pol = c.policy(pid)
        m = pol.get("measured") or {}
        print(f"policy {pid}: avg_bits {pol['cost']['avg_bits']:.4f}, {m.get('metric')} {m.get('value')}")
    if args.out and job.policy_ids:
        args.out.write_text(json.dumps(c.policy(job.policy_ids[0]), indent=2))
        print(f"wrote {args.out}")
    return 0


def follow(c, job_id: str):
    """Wait for the job with a progress bar; its final state."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    with Progress(TextColumn("[bold]{task.fields[phase]:<11}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                  TimeElapsedColumn(), TextColumn("{task.fields[msg]}"), transient=False) as bar:
        task = bar.add_task("job", total=1.0, phase=JobStatus.QUEUED, msg="")

        def show(j):
            bar.update(task, completed=j.progress, phase=j.phase or j.status, msg=j.message[:60])
        job = c.wait(job_id, timeout=24 * 3600, poll_interval=0.5, on_progress=show)
        bar.update(task, completed=1.0, phase=job.status)
    return job


def _status(c, args) -> int:
    from rich.console import Console
    from rich.table import Table
    console = Console()
    if args.job:
        j = c.get(args.job)
        console.print_json(j.model_dump_json(exclude={"request"}))
        return 0
    page = c.list(status=args.filter_status, limit=args.limit)
    t = Table("job", "status", "phase", "progress", "model", "budgets", "created")
    for j in page.items:
        b = j.request.budgets
        t.add_row(j.id, j.status, j.phase or "", f"{j.progress:.0%}", j.model_id[:12],
                  json.dumps(b if isinstance(b, dict) else f"{len(b)} points"), j.created_at.strftime("%Y-%m-%d %H:%M:%S"))
    console.print(t)
    return 0


def _policy(c, args) -> int:
    job = c.get(args.job)
    if job.status != JobStatus.SUCCEEDED:
        return _fail(f"job {job.id} is {job.status}; it has no policy yet")
    if not 0 <= args.index < len(job.policy_ids):
        return _fail(f"--index {args.index}: job {job.id} has {len(job.policy_ids)} policies")
    if not args.out.parent.exists():
        return _fail(f"--out {args.out}: folder {str(args.out.parent)!r} does not exist")
    args.out.write_text(json.dumps(c.policy(job.policy_ids[args.index]), indent=2))
    print(f"wrote {args.out}")
    return 0


def _solve(c, args) -> int:
    """``solve TABLE --budget …``: the server's solve of a stored table, one line, then the
    layer → format choice; ``--out`` writes the whole answer as JSON."""
    from pydantic import ValidationError

    from search.budgets import parse_budget
    try:
        limits = dict(parse_budget(b) for b in args.budget)
        latency = _read_json(args.latency_table, "--latency-table") if args.latency_table else None
        if args.out and not args.out.parent.exists():
            raise ValueError(f"--out {args.out}: folder {str(args.out.parent)!r} does not exist")
        out = c.solve_table(args.table, limits, args.solver, ties=[t for t in args.tie.split(",") if t] or None,
                            runtime=args.runtime, latency_table=latency)
    except ValidationError as e:
        err = e.errors()[0]
        return _fail(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}")
    cost = ", ".join(f"{k} {v:.6g}" for k, v in out.cost.items())
    bound = "" if out.lower_bound is None else f", bound {out.lower_bound:.6g}, gap {out.gap:.3g}"
    print(f"table {out.table_id}: {out.solver} objective {out.objective:.6g}{bound}; {cost} "
          f"({out.server_ms:.1f} ms on the server)")
    width = max((len(n) for n in out.layers), default=0)
    for name, label in out.layers.items():
        print(f"  {name:<{width}}  {label}")
    if args.out:
        args.out.write_text(out.model_dump_json(indent=2))
        print(f"wrote {args.out}")
    return 0


def _read_json(path: Path, flag: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{flag} {path}: {str(e).splitlines()[0]}") from None


def _cancel(c, args) -> int:
    j = c.cancel(args.job)
    print(f"job {j.id} {j.status}: {j.message}")
    return 0
