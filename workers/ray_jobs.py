"""The Ray side of the service: model inspection, whole jobs, and sensitivity chunks.

A job is one Ray task (``run_job``) that runs the pipeline's phases; its sensitivity phase fans
out as ``measure_chunk`` tasks (rows of the table) when the proxy is chunkable, so N workers
compute it about N times faster — while the job task waits in ``ray.get`` Ray lends its CPU to
the chunks. Progress goes into a Ray queue that the server drains into the store, and the job
ends with an outcome; both are typed messages (``workers.messages``). User errors come back as
``Failed`` (``{"ok": False, "error": …}`` from ``inspect_model``), so the server needs none of the
engine's exception classes; anything else raises and the server records it as a failure with its
reason.

Each worker process keeps the last prepared model and data (``workers.prepare.PrepareCache``: the
model by reference, the rest by ``prepare_key``), so chunks of one job, and later jobs on the same
model, do not reload it."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

from workers.messages import ChunkProgress, Done, Failed, Message, Outcome, PointDone, PointResult, Progress

# this process's PrepareCache, made on first use (workers.prepare imports torch, which the
# server process that imports this module never loads); clearing the list drops it
_CACHE: list[Any] = []


def _user_errors() -> tuple[type[Exception], ...]:
    from workers.errors import USER_ERRORS
    return USER_ERRORS


def _gpu_options() -> dict:
    """Ask for a GPU only when the cluster has one (CPU-only clusters would never schedule)."""
    try:
        return {"num_gpus": 1} if ray.cluster_resources().get("GPU", 0) >= 1 else {}
    except Exception:  # not connected: let Ray decide later
        return {}


def text_dir() -> Path:
    """Where uploaded calibration/evaluation text is written on a worker: under the server's
    upload folder (BITPLAN_UPLOAD_DIR, passed to every Ray worker; else BITPLAN_VAR_DIR/uploads),
    never a host-wide temporary folder that other users and services share."""
    up = os.environ.get("BITPLAN_UPLOAD_DIR") or str(Path(os.environ.get("BITPLAN_VAR_DIR", "var")) / "uploads")
    return Path(up).resolve() / "texts"


def _materialise(spec: dict, texts: dict[str, str]) -> dict:
    """Uploaded calibration/evaluation text becomes a file: source on this worker."""
    spec = dict(spec)
    for field, text in texts.items():
        if text is None:
            continue
        digest = hashlib.sha256(text.encode()).hexdigest()[:32]
        path = text_dir() / f"{digest}.txt"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
        spec[field] = f"file:{path}"
    return spec


def _prepared(spec_d: dict, checked=None):
    """Model, layers, calibration batches, formats and quantizer for a spec (no evaluation
    batches: a chunk never evaluates), through this process's ``PrepareCache``. ``checked``: the
    job's ``search.validate.Checked``, so a chunk does not validate the spec again."""
    from search.spec import SearchSpec
    from workers.prepare import PrepareCache, prepare

    if not _CACHE:
        _CACHE.append(PrepareCache())
    return prepare(SearchSpec(**spec_d), with_evals=False, cache=_CACHE[0], checked=checked)


@ray.remote(num_cpus=1, max_retries=3)
def inspect_model(ref: str) -> dict:
    """Load a model once to learn its identity (weights sha256), task and quantizable layers."""
    try:
        from workers.pipeline import task_layers
        from workers.sources import load_model
        lm = load_model(ref)
        pairs = task_layers(lm)
    except _user_errors() as e:
        return {"ok": False, "error": str(e).splitlines()[0]}
    layers = [p[0] for p in pairs]
    return {"ok": True, "id": lm.sha256, "ref": ref, "kind": lm.kind, "metric": lm.task.metric,
            "n_layers": len(layers), "n_weights": int(sum(l.numel for l in layers)),
            "layers": [l.to_dict() for l in layers], "max_positions": lm.info.get("max_positions")}


@ray.remote(num_cpus=1, max_retries=3)
def measure_chunk(spec_d: dict, texts: dict[str, str], rows: list[int], chunk: int, n_chunks: int,
                  queue=None, checked=None) -> dict:
    """Rows ``rows`` of a chunkable proxy's table and of its standard errors (None when the
    proxy gives none); the rest of the chunk's table is zeros, dropped by the caller."""
    from proxies.base import ProxyContext
    from proxies.registry import get_proxy

    torch_threads()
    spec_d = _materialise(spec_d, texts)
    p = _prepared(spec_d, checked)
    params = {**spec_d.get("proxy_params", {}), "layers": rows}
    last = [0.0]

    def report(fraction: float, message: str) -> None:
        now = time.monotonic()
        if queue is not None and (now - last[0] > 0.5 or fraction >= 1.0):
            last[0] = now
            queue.put(ChunkProgress(chunk, n_chunks, fraction, message), block=False)

    ctx = ProxyContext(p.lm.model, p.layers, p.modules, p.lm.task, p.calib, p.formats, spec_d.get("seed", 0), report,
                       p.table_sha256, p.info, quantizer=p.quantizer)
    table = get_proxy(spec_d.get("proxy") or "measured", **params).compute(ctx)
    return {"values": table.values[rows].tolist(),
            "stderr": None if table.stderr is None else table.stderr[rows].tolist()}


def torch_threads() -> None:
    """Ray sets OMP_NUM_THREADS=1 in workers; give torch the CPUs this task was granted."""
    import torch
    n = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1) or 1)
    torch.set_num_threads(max(1, n))


def chunk_rows(n_rows: int, n_chunks: int) -> list[list[int]]:
    """Deal rows out round-robin (0, n, 2n, … to chunk 0; 1, n+1, … to chunk 1). A measured row
    costs a forward pass from its layer's block to the output, so early rows cost more than late
    ones: contiguous chunks would give one worker all the expensive rows."""
    n_chunks = max(1, min(n_chunks, n_rows))
    return [list(range(i, n_rows, n_chunks)) for i in range(n_chunks)]


@ray.remote(num_cpus=1, max_retries=3)
def measure_policies(spec_d: dict, texts: dict[str, str], choices: list[list[int]], checked=None) -> list[float]:
    """Calibration loss of each policy (format index per layer): the evolved proxy's ground truth."""
    from proxies.evaluate import Evaluator

    torch_threads()
    p = _prepared(_materialise(spec_d, texts), checked)
    ev = Evaluator(p.lm.model, p.modules, p.lm.task, p.quantizer)
    return [ev.loss([p.formats[int(k)] for k in c], p.calib) for c in choices]


def _policy_mapper(spec_d: dict, texts: dict[str, str], n_chunks: int, ctx, checked=None):
    """``ctx.map_policies`` for the evolved proxy: the ground-truth set measured on Ray."""
    def run(choices):
        parts = [choices[i::n_chunks].tolist() for i in range(n_chunks)]
        refs = [measure_policies.remote(spec_d, texts, part, checked) for part in parts if part]
        out = np.zeros(len(choices))
        done = 0
        for i, ref in enumerate(refs):
            out[i::n_chunks] = ray.get(ref)
            done += 1
            ctx.report(0.1 * done / len(refs), f"ground truth: {done}/{len(refs)} chunks")
        return out.tolist()
    return run


def _fan_out(spec_d: dict, texts: dict[str, str], n_chunks: int, queue, checked=None):
    """A ``compute_table`` for the pipeline that spreads a chunkable proxy over Ray tasks (and
    the evolved proxy's ground-truth measurements); they get the job's ``checked`` with it."""
    from search.table import SensitivityTable

    def compute(proxy, ctx):
        if proxy.name == "evolved" and n_chunks > 1:
            ctx.map_policies = _policy_mapper(spec_d, texts, n_chunks, ctx, checked)
        if not proxy.chunkable or n_chunks <= 1 or len(ctx.layers) < 2:
            return proxy.compute(ctx)
        t0 = time.perf_counter()
        parts = chunk_rows(len(ctx.layers), n_chunks)
        opts = _gpu_options()
        # the chunks measure with the proxy's own parameters (the pipeline may have set some the
        # spec leaves to defaults), so every row comes from the same table definition
        chunk_spec = {**spec_d, "proxy": proxy.name, "proxy_params": {k: v for k, v in proxy.params.items() if k != "layers"}}
        refs = [measure_chunk.options(**opts).remote(chunk_spec, texts, rows, i, len(parts), queue, checked)
                for i, rows in enumerate(parts)]
        values = np.zeros((len(ctx.layers), len(ctx.formats)))
        stderr: np.ndarray | None = np.zeros_like(values)
        pending, where = list(refs), {r: rows for r, rows in zip(refs, parts)}
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            got = ray.get(ready[0])
            values[where[ready[0]]] = np.array(got["values"])
            if got["stderr"] is None:
                stderr = None
            elif stderr is not None:
                stderr[where[ready[0]]] = np.array(got["stderr"])
            ctx.report(1 - len(pending) / len(refs), f"{len(refs) - len(pending)}/{len(refs)} chunks")
        return SensitivityTable(ctx.layers, ctx.formats, values, proxy.name, proxy.table_params(ctx), ctx.calibration,
                                stderr, {"seconds": time.perf_counter() - t0, "chunks": len(parts)},
                                ctx.model_sha256, {"chunks": len(parts)})
    return compute


@ray.remote(num_cpus=1, max_retries=2)
def run_job(spec_ds: list[dict], texts: dict[str, str], table_d: dict | None,  n_chunks: int, queue=None) -> Outcome:
    """Run a job: one policy per budget point, one sensitivity table shared by all of them. The
    API validated its specs at submission: they are parsed here once (``Checked.accepted``) and
    the pipeline and the chunks take that instead of validating again."""
    from search.spec import SearchSpec
    from search.table import SensitivityTable
    from search.validate import Checked
    from workers.pipeline import run_search
    from workers.sources import load_model

    torch_threads()

    def post(message: Message) -> None:
        if queue is not None:
            queue.put(message, block=False)

    def progress(phase: str, fraction: float, message: str) -> None:
        post(Progress(phase, fraction, message))

    try:
        table = SensitivityTable.from_dict(table_d) if table_d else None
        lm, out, computed = None, [], False
        specs = [SearchSpec(**_materialise(raw, texts)) for raw in spec_ds]
        checked = Checked.accepted(specs)
        for i, (raw, spec) in enumerate(zip(spec_ds, specs)):
            lm = lm or load_model(spec.model)
            res = run_search(spec, progress, loaded=lm, table=table, checked=checked,
                             compute_table=_fan_out(raw, texts, n_chunks, queue, checked))
            computed = computed or (table is None and res.table is not None)
            table = res.table or table  # the joint solver makes no table
            out.append(PointResult(json.loads(res.policy.to_json(None)), res.timings))
            post(PointDone(i + 1, len(spec_ds)))
    except _user_errors() as e:
        return Failed(str(e).splitlines()[0] if str(e) else type(e).__name__)
    return Done(tuple(out), table.to_dict() if computed and table is not None else None)
