"""The arguments of the remote commands (``serve``, ``submit``, ``status``, ``policy``,
``cancel``, ``solve``, ``data``), added to service.cli's parser: the local and remote CLIs share one
``bitplan`` command."""
from __future__ import annotations

import os
from pathlib import Path

from search.defaults import DEFAULT_BITS
from service.jobstate import JobStatus

# --group-size not given; None itself means per-channel, so it cannot mark "not given". It lives
# here, not in service.cli: under `python -m service.cli` that module is __main__, and a sentinel
# defined there would be a different object from the one `import service.cli` makes.
GROUPS_NOT_GIVEN = object()


REMOTE_DATA_HELP = ("a builtin name (wikitext2-valid, wikitext2-test, tinyshakespeare, pydoc, digits), upload:<id> "
                    "(from `bitplan data upload`), a server-side path under its model root (images:DIR, tensors:FILE, "
                    "text:FILE, jsonl:FILE, dataset:DIR), a local folder of images or a local .zip/.tar.gz/"
                    ".safetensors/.npz/.txt/.jsonl file (uploaded first), or @FILE to send a text file inline")


def add_commands(sub, bits_type, group_type, kv_type, data_args=None) -> None:
    """Add the remote commands to ``sub``; the argument types are service.cli's (shared with
    the local ``search``), and ``data_args`` adds its image/dataset options to ``submit``."""
    s = sub.add_parser("serve", help="run the API server (embedded SQLite + local Ray unless configured)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--log-level", default="info")
    _add_submit(sub, bits_type, group_type, kv_type, data_args)
    _add_job_commands(sub)
    _add_solve(sub)
    _add_data(sub)


def _common(p) -> None:
    p.add_argument("--url", default=os.environ.get("BITPLAN_URL", "http://127.0.0.1:8000"),
                   help="server URL (env BITPLAN_URL; default http://127.0.0.1:8000)")
    p.add_argument("--token", default=os.environ.get("BITPLAN_API_TOKEN"), help="API token (env BITPLAN_API_TOKEN)")


def _add_submit(sub, bits_type, group_type, kv_type, data_args) -> None:
    s = sub.add_parser("submit", help="submit a job to a server (registers the model first if needed)")
    _common(s)
    s.add_argument("--model", required=True,
                   help="a registered model id, a reference (builtin:minilm-l6; hf:<dir>, export:<file.pt2>, "
                        "torchscript:<file> on the server) or a local torch.export (.pt2) or TorchScript file to upload")
    s.add_argument("--budget", action="append", required=True, metavar="METRIC=VALUE",
                   help="avg_bits=3.3, size_bytes=…, bops=…; repeat for several constraints (all must hold)")
    s.add_argument("--sweep", metavar="METRIC=V1,V2,…",
                   help="extra budget points on one metric (one policy each, one shared sensitivity table)")
    s.add_argument("--bits", type=bits_type, default=None,
                   help=f"candidate bit-widths (default {','.join(map(str, DEFAULT_BITS))})")
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
    s.add_argument("--refine-patience", type=int, metavar="N",
                   help="refine also stops after N losing candidates in a row (server default when not given)")
    s.add_argument("--refine-seconds", type=float, metavar="S", help="wall time refine may spend (server default when not given)")
    s.add_argument("--refine-method", choices=["moves", "loop"], help="how refine searches (server default when not given)")
    s.add_argument("--judge-samples", type=int, metavar="N",
                   help="calibration-source samples apart from the calibration ones that judge refine (0 = the calibration samples)")
    s.add_argument("--compute-dtype", choices=["auto", "float32", "bfloat16"],
                   help="dtype of the measured proxy's cells and refine's judge (server default auto: bfloat16 where native)")
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


def _add_job_commands(sub) -> None:
    s = sub.add_parser("status", help="list recent jobs, or show one job")
    _common(s)
    s.add_argument("job", nargs="?")
    s.add_argument("--status", dest="filter_status", choices=[s.value for s in JobStatus])
    s.add_argument("--limit", type=int, default=20)

    s = sub.add_parser("policy", help="download a job's policy (bitplan.policy/v1 JSON)")
    _common(s)
    s.add_argument("job")
    s.add_argument("--index", type=int, default=0, help="which budget point's policy (default 0)")
    s.add_argument("--out", type=Path, required=True)

    s = sub.add_parser("cancel", help="cancel a queued or running job")
    _common(s)
    s.add_argument("job")


def _add_solve(sub) -> None:
    s = sub.add_parser("solve", help="solve a new budget on a stored sensitivity table (no job; nothing is stored)")
    _common(s)
    s.add_argument("table", help="the table id: a job's sensitivity_id (`bitplan status JOB`)")
    s.add_argument("--budget", action="append", required=True, metavar="METRIC=VALUE",
                   help="avg_bits=3.8, size_bytes=…, bops=…, latency_ms=…; repeat for several constraints (all must hold)")
    s.add_argument("--solver", default="ilp", help="a solver of a table: ilp (default), lp, convex, pareto")
    s.add_argument("--tie", default="", help="tie presets, e.g. qkv,gate_up")
    s.add_argument("--runtime", choices=["vllm", "sglang", "none"], help="vllm/sglang tie q/k/v, gate/up and MoE experts")
    s.add_argument("--latency-table", type=Path, help="JSON {layer: {format label or bits: ms}} for latency_ms budgets")
    s.add_argument("--out", type=Path, help="write the answer (layers, cost, objective, bound, gap) as JSON here")


def _add_data(sub) -> None:
    d = sub.add_parser("data", help="upload calibration/evaluation data to a server, or show an upload")
    dsub = d.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("upload", help="upload a folder of images (class/ subfolders = labels), a .zip/.tar.gz of one, "
                                       "a .safetensors/.npz tensor file or a .txt/.jsonl text file")
    _common(s)
    s.add_argument("path", type=Path)
    s.add_argument("--kind", choices=["images", "tensors", "text", "jsonl"],
                   help="what the file holds (default: told from its name and bytes)")
    s = dsub.add_parser("show", help="show an upload's record")
    _common(s)
    s.add_argument("id", help="the id (or upload:<id>) that `bitplan data upload` printed")
