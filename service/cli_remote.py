"""CLI commands that talk to a bitplan server: ``serve``, ``submit``, ``status``, ``policy``,
``cancel`` and ``data upload``/``data show``.

They use the SDK (``service.client``), so they need no torch locally except ``serve``. Bad
arguments and 4xx answers print one line and exit 2; an unreachable server exits 1."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from service.jobstate import JobStatus

EXIT_USAGE, EXIT_UNAVAILABLE = 2, 1


# --group-size not given; None itself means per-channel, so it cannot mark "not given". It lives
# here, not in service.cli: under `python -m service.cli` that module is __main__, and a sentinel
# defined there would be a different object from the one `import service.cli` makes.
GROUPS_NOT_GIVEN = object()


REMOTE_DATA_HELP = ("a builtin name (wikitext2-valid, wikitext2-test, tinyshakespeare, pydoc, digits), upload:<id> "
                    "(from `bitplan data upload`), a server-side path under its model root (images:DIR, tensors:FILE, "
                    "text:FILE, jsonl:FILE, dataset:DIR), a local folder of images or a local .zip/.tar.gz/"
                    ".safetensors/.npz/.txt/.jsonl file (uploaded first), or @FILE to send a text file inline")
BUILTIN_DATA = ("wikitext2-valid", "wikitext2-test", "tinyshakespeare", "pydoc", "digits")
SERVER_PREFIXES = ("upload:", "images:", "tensors:", "text:", "jsonl:", "dataset:", "file:")
MODEL_REFS = ("builtin:", "hf:", "export:", "torchscript:")


def add_commands(sub, bits_type, group_type, kv_type, data_args=None) -> None:
    def common(p):
        p.add_argument("--url", default=os.environ.get("BITPLAN_URL", "http://127.0.0.1:8000"),
                       help="server URL (env BITPLAN_URL; default http://127.0.0.1:8000)")
        p.add_argument("--token", default=os.environ.get("BITPLAN_API_TOKEN"), help="API token (env BITPLAN_API_TOKEN)")

    s = sub.add_parser("serve", help="run the API server (embedded SQLite + local Ray unless configured)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--log-level", default="info")

    s = sub.add_parser("submit", help="submit a job to a server (registers the model first if needed)")
    common(s)
    s.add_argument("--model", required=True,
                   help="a registered model id, a reference (builtin:minilm-l6; hf:<dir>, export:<file.pt2>, "
                        "torchscript:<file> on the server) or a local torch.export (.pt2) or TorchScript file to upload")
    s.add_argument("--budget", action="append", required=True, metavar="METRIC=VALUE",
                   help="avg_bits=3.3, size_bytes=…, bops=…; repeat for several constraints (all must hold)")
    s.add_argument("--sweep", metavar="METRIC=V1,V2,…",
                   help="extra budget points on one metric (one policy each, one shared sensitivity table)")
    s.add_argument("--bits", type=bits_type, default=None, help="candidate bit-widths (default 2,3,4,8)")
    s.add_argument("--group-size", type=group_type, default=GROUPS_NOT_GIVEN,
                   help="group size(s), e.g. 64 or 32,64,128, or per-channel")
    s.add_argument("--symmetric", action="store_true")
    s.add_argument("--proxy")
    s.add_argument("--proxy-param", action="append", type=kv_type, default=[], metavar="KEY=VALUE")
    s.add_argument("--solver")
    s.add_argument("--solver-param", action="append", type=kv_type, default=[], metavar="KEY=VALUE",
                   help="joint solver parameter, e.g. ratios=[0,0.25,0.5]")
    s.add_argument("--quantizer", choices=["rtn", "gptq"], help="weight quantizer (default rtn)")
    s.add_argument("--quantizer-param", action="append", type=kv_type, default=[], metavar="KEY=VALUE",
                   help="gptq parameter: damp, act_order, block_size, n_samples")
    s.add_argument("--refine", dest="refine", action="store_true", default=None)
    s.add_argument("--no-refine", dest="refine", action="store_false")
    s.add_argument("--refine-evals", type=int, help="candidate policies refine may judge (server default when not given)")
    s.add_argument("--refine-seconds", type=float, metavar="S", help="wall time refine may spend (server default when not given)")
    s.add_argument("--refine-method", choices=["moves", "loop"], help="how refine searches (server default when not given)")
    s.add_argument("--judge-samples", type=int, metavar="N",
                   help="calibration-source samples apart from the calibration ones that judge refine (0 = the calibration samples)")
    s.add_argument("--device", help="where the worker runs the forward passes: auto, cpu, cuda, cuda:N, mps (server default auto)")
    s.add_argument("--offload", dest="offload", action="store_true", default=None,
                   help="stream the model's blocks through the GPU one at a time (default: only when it does not fit)")
    s.add_argument("--calib", help="calibration data: " + REMOTE_DATA_HELP)
    s.add_argument("--eval", help="held-out evaluation data (same choices)")
    s.add_argument("--n-calib", type=int)
    s.add_argument("--n-eval", type=int)
    s.add_argument("--seq-len", type=int)
    if data_args is not None:
        data_args(s, remote=True)
    s.add_argument("--tie", default="")
    s.add_argument("--runtime", choices=["vllm", "sglang", "none"], help="vllm/sglang tie q/k/v, gate/up and MoE experts")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--idempotency-key", help="retry-safe key (generated when not given)")
    s.add_argument("--wait", action="store_true", help="show a progress bar until the job ends")
    s.add_argument("--out", type=Path, help="with --wait: write the (first) policy JSON here")

    s = sub.add_parser("status", help="list recent jobs, or show one job")
    common(s)
    s.add_argument("job", nargs="?")
    s.add_argument("--status", dest="filter_status", choices=[s.value for s in JobStatus])
    s.add_argument("--limit", type=int, default=20)

    s = sub.add_parser("policy", help="download a job's policy (bitplan.policy/v1 JSON)")
    common(s)
    s.add_argument("job")
    s.add_argument("--index", type=int, default=0, help="which budget point's policy (default 0)")
    s.add_argument("--out", type=Path, required=True)

    s = sub.add_parser("cancel", help="cancel a queued or running job")
    common(s)
    s.add_argument("job")

    d = sub.add_parser("data", help="upload calibration/evaluation data to a server, or show an upload")
    dsub = d.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("upload", help="upload a folder of images (class/ subfolders = labels), a .zip/.tar.gz of one, "
                                       "a .safetensors/.npz tensor file or a .txt/.jsonl text file")
    common(s)
    s.add_argument("path", type=Path)
    s.add_argument("--kind", choices=["images", "tensors", "text", "jsonl"],
                   help="what the file holds (default: told from its name and bytes)")
    s = dsub.add_parser("show", help="show an upload's record")
    common(s)
    s.add_argument("id", help="the id (or upload:<id>) that `bitplan data upload` printed")


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"bitplan: error: {message}", file=sys.stderr)
    return code


def _data(c, value: str | None, flag: str) -> dict:
    """A --calib/--eval value as the request's data: inline text (@FILE), a source the server
    knows (builtin name, upload:<id>, server-side path), or a local path uploaded first."""
    if value is None:
        return {}
    if value.startswith("@"):
        path = Path(value[1:])
        if not path.is_file():
            raise ValueError(f"{flag} {value}: no such file")
        return {"text": path.read_text(encoding="utf-8", errors="replace")}
    if value in BUILTIN_DATA or value.startswith(SERVER_PREFIXES) or not Path(value).exists():
        return {"source": value}
    rec = c.upload_data(value)
    print(f"uploaded {value} as {rec.source} ({_describe_data(rec)})", flush=True)
    return {"source": rec.source}


def _describe_data(rec) -> str:
    classes = f", {len(rec.classes)} classes ({', '.join(rec.classes[:8])}{', …' if len(rec.classes) > 8 else ''})" \
        if rec.classes else ""
    return f"{rec.kind}, {rec.samples} samples{classes}, {rec.bytes} bytes"


def _data_fields(args) -> dict:
    out = {k: getattr(args, k, None) for k in ("image_size", "resize", "image_mean", "image_std", "data_column",
                                               "label_column") if getattr(args, k, None) is not None}
    if getattr(args, "fold_batchnorm", None):
        out["fold_batchnorm"] = True
    return out


def _budgets(args) -> dict | list[dict]:
    from search.budgets import parse_budget
    base = dict(parse_budget(b) for b in args.budget)
    if not args.sweep:
        return base
    metric, _, values = args.sweep.partition("=")
    try:
        points = [float(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--sweep {args.sweep!r}: give METRIC=V1,V2,… with numbers") from None
    if not metric or not points:
        raise ValueError(f"--sweep {args.sweep!r}: give METRIC=V1,V2,…")
    return [base] + [{**base, metric: v} for v in points]


def run(args) -> int:
    import httpx

    from service.client import BitplanError, Client, JobFailed
    try:
        if args.command == "serve":
            return _serve(args)
        with Client(args.url, args.token) as c:
            return {"submit": _submit, "status": _status, "policy": _policy, "cancel": _cancel,
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
        print(f"{rec.source}: {_describe_data(rec)} ({rec.name or 'unnamed'})")
        return 0
    if not args.path.exists():
        return _fail(f"{args.path}: no such file or folder")
    rec = c.upload_data(args.path, kind=args.kind)
    print(f"{rec.source}")
    print(f"  {_describe_data(rec)}; use it as --calib {rec.source} (or calibration={{\"source\": \"{rec.source}\"}})")
    return 0


def _submit(c, args) -> int:
    from pydantic import ValidationError
    try:
        budgets = _budgets(args)
        formats = {} if args.bits is None else {"bits": args.bits}
        if args.group_size is not GROUPS_NOT_GIVEN:
            formats["group_size"] = args.group_size  # None = per-channel
        if args.symmetric:
            formats["symmetric"] = True
        extra = _data_fields(args)
    except (ValueError, ValidationError) as e:
        return _fail(str(e).splitlines()[0])
    model_id = _resolve_model(c, args.model)
    calib, evaluation = _data(c, args.calib, "--calib"), _data(c, args.eval, "--eval")
    if args.n_calib:
        calib["n_samples"] = args.n_calib
    if args.n_eval:
        evaluation["n_samples"] = args.n_eval
    if args.seq_len:
        calib["seq_len"] = args.seq_len
    try:
        job = c.submit(model_id, budgets, idempotency_key=args.idempotency_key, formats=formats or None,
                       proxy=args.proxy, proxy_params=dict(args.proxy_param) or None, solver=args.solver,
                       solver_params=dict(args.solver_param) or None, runtime=args.runtime,
                       quantizer=args.quantizer, quantizer_params=dict(args.quantizer_param) or None,
                       refine=args.refine, refine_evals=args.refine_evals, refine_seconds=args.refine_seconds,
                       refine_method=args.refine_method,
                       judge_samples=args.judge_samples, device=args.device, offload=args.offload,
                       calibration=calib or None, evaluation=evaluation or None, seed=args.seed,
                       ties=[t for t in args.tie.split(",") if t] or None, **extra)
    except ValidationError as e:
        err = e.errors()[0]
        return _fail(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}")
    print(f"job {job.id} {job.status}", flush=True)
    if not args.wait:
        return 0
    job = _follow(c, job.id)
    for pid in job.policy_ids:
        pol = c.policy(pid)
        m = pol.get("measured") or {}
        print(f"policy {pid}: avg_bits {pol['cost']['avg_bits']:.4f}, {m.get('metric')} {m.get('value')}")
    if args.out and job.policy_ids:
        args.out.write_text(json.dumps(c.policy(job.policy_ids[0]), indent=2))
        print(f"wrote {args.out}")
    return 0


def _follow(c, job_id: str):
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


def _cancel(c, args) -> int:
    j = c.cancel(args.job)
    print(f"job {j.id} {j.status}: {j.message}")
    return 0
