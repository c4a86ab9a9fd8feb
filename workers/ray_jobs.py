"""The Ray side of the service: model inspection, whole jobs, and sensitivity chunks.

A job is one Ray task (``run_job``) that runs the pipeline's phases; its sensitivity phase fans
out (``_fan_out``) when the proxy is chunkable and the cluster has other nodes: the rows of the
table are split by their estimated cost (``row_costs``, ``job_share``: a measured row costs a
forward pass from its layer's trunk block to the output), the job task measures its node's share
itself, with the threads it runs on, and one task per CPU of the other nodes (placed there)
measures each other part. Those tasks are launched as soon as the job task has loaded the model
(``launch_shares``, ``measure_share``): each prepares the model and the calibration batches from
the spec (``workers.prepare.PrepareCache``: a warm worker reloads no weights) while the job task
calibrates, deals the rows exactly as the job task will, and starts measuring with nothing to wait
for. A part that fails or comes back with other rows or parameters is measured by the job task.
A job that launched no parts at its start (it had no other node then) uses the nodes there are
when it reaches the phase: ``measure_rows`` tasks there take the job's ``ProxyContext`` (model,
layers, calibration batches, quantizer) from the Ray object store, put there once by the job
task; a model that cannot travel that way (on a GPU, offloaded, not picklable) is prepared by
each chunk from the spec (``measure_chunk``).

Threads: a chunk runs torch on the CPUs Ray granted it; the job task (granted one CPU) runs its
phases on its share of the node (``job_threads``): the node's CPUs less those held by running
bitplan chunks, divided among the bitplan jobs running on the node, counted by a ledger of
locked files per Ray node (``NodeLedger``; the kernel drops a dead task's lock, so a killed
task is never counted), re-evaluated at every phase change and every few seconds within one.
While the job task waits in ``ray.wait`` for its chunks, Ray lends its CPU to them.

Progress goes into a Ray queue that the server drains into the store, and the job ends with an
outcome; both are typed messages (``workers.messages``). User errors come back as ``Failed``
(``{"ok": False, "error": …}`` from ``inspect_model``), so the server needs none of the engine's
exception classes; anything else raises and the server records it as a failure with its reason."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import heapq
import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

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


class Poster:
    """Messages into a job's queue (``ray.util.queue.Queue``) without waiting for them.
    ``Queue.put`` waits for the queue actor in ``ray.get``, and a task that waits lends its CPU
    to Ray, which may start another task on it (the job's other sensitivity chunk, on the node
    where the job task still computes its own) while this one goes on computing: two tasks on
    one CPU and an idle node elsewhere. An actor runs one caller's calls in order, so ``flush``
    (waiting for the last message) waits for all of them; the job and its chunks flush before
    they return, so the server has every message once it has the outcome. A message to a full
    or gone queue is dropped, never a job's failure.

    Messages of one phase that come less than ``every`` seconds after the last call are sent
    together with the next one (none is dropped, the order is kept): refine reports every judged
    candidate, several a second, and one actor call per message cost the job's node about a
    tenth of a CPU between the queue actor and the server draining it. A new phase goes at once."""

    def __init__(self, queue, every: float = 0.5):
        self.queue, self.last, self.every = queue, None, every
        self.pending: list[Message] = []
        self.sent_at, self.phase = 0.0, None

    def __call__(self, message: Message) -> None:
        if self.queue is None:
            return
        actor = getattr(self.queue, "actor", None)
        if actor is None:  # not a Ray queue (a test's list-like queue): as it asks
            self.queue.put(message, block=False)
            return
        self.pending.append(message)
        phase = getattr(message, "phase", None)
        if (phase is not None and phase != self.phase) or time.monotonic() - self.sent_at >= self.every:
            self._send(actor)
        if phase is not None:
            self.phase = phase

    def _send(self, actor) -> None:
        if self.pending:
            self.last = actor.put_nowait_batch.remote(self.pending)
            self.pending, self.sent_at = [], time.monotonic()

    def flush(self, timeout: float = 30.0) -> None:
        actor = getattr(self.queue, "actor", None)
        if actor is not None:
            self._send(actor)
        if self.last is not None:
            with contextlib.suppress(Exception):
                ray.get(self.last, timeout=timeout)
            self.last = None


def _chunk_reporter(post: Poster, chunk: int, n_chunks: int):
    """A chunk's ``ctx.progress``: ``ChunkProgress`` into the job's queue, at most every 0.5 s."""
    last = [0.0]

    def report(fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - last[0] > 0.5 or fraction >= 1.0:
            last[0] = now
            post(ChunkProgress(chunk, n_chunks, fraction, message))
    return report


def _rows(table, rows: list[int], **extra) -> dict:
    return {"values": table.values[rows].tolist(),
            "stderr": None if table.stderr is None else table.stderr[rows].tolist(), **extra}


def _spec_context(p, spec_d: dict, progress):
    """The ``ProxyContext`` of a chunk that prepared its model and data from the spec (``p``:
    ``_prepared``), its comparison dtype resolved for the device its model is on."""
    from proxies.base import ProxyContext
    from proxies.device import model_device
    from proxies.precision import resolve_compute_dtype

    return ProxyContext(p.lm.model, p.layers, p.modules, p.lm.task, p.calib, p.formats, spec_d.get("seed", 0), progress,
                        p.table_sha256, p.info, quantizer=p.quantizer,
                        compute_dtype=resolve_compute_dtype(spec_d.get("compute_dtype"), model_device(p.lm.model)))


@ray.remote(num_cpus=1, max_retries=3)
def measure_chunk(spec_d: dict, texts: dict[str, str], rows: list[int], chunk: int, n_chunks: int,
                  queue=None, checked=None) -> dict:
    """Rows ``rows`` of a chunkable proxy's table and of its standard errors (None when the
    proxy gives none), on a model and data this worker prepares from the spec (the way for a
    job whose model cannot travel through the object store, see ``_ship``)."""
    from proxies.registry import get_proxy

    post = Poster(queue)
    with _hold("chunk"):
        torch_threads()
        spec_d = _materialise(spec_d, texts)
        p = _prepared(spec_d, checked)
        params = {**spec_d.get("proxy_params", {}), "layers": rows}
        ctx = _spec_context(p, spec_d, _chunk_reporter(post, chunk, n_chunks))
        table = get_proxy(spec_d.get("proxy") or "measured", **params).compute(ctx)
    post.flush()
    return _rows(table, rows, seconds=table.timing.get("seconds"), node=_node_name())


@ray.remote(num_cpus=1, max_retries=3)
def measure_rows(shipped: list, proxy: str, params: dict, rows: list[int], chunk: int, n_chunks: int,
                 queue=None) -> dict:
    """Rows ``rows`` of a chunkable proxy's table (and standard errors) on the job's own
    ``ProxyContext``, taken from the object store: ``shipped`` is ``[ObjectRef]`` (in a list, so
    Ray neither fetches it before the task starts nor places the task by where the object lies).
    No model load, no tokenization, no validation here: the job task did all of it once."""
    from proxies.registry import get_proxy

    post = Poster(queue)
    with _hold("chunk"):
        torch_threads()
        t = time.perf_counter()
        ctx = ray.get(shipped[0])
        fetched = time.perf_counter() - t
        ctx.progress = _chunk_reporter(post, chunk, n_chunks)
        cpu = time.process_time()
        table = get_proxy(proxy, **{**params, "layers": rows}).compute(ctx)
        cpu = time.process_time() - cpu
    post.flush()
    return _rows(table, rows, fetch_seconds=round(fetched, 3), seconds=table.timing.get("seconds"), node=_node_name(),
                 cpu_seconds=round(cpu, 3))


@ray.remote(num_cpus=1, max_retries=3)
def measure_share(spec_d: dict, texts: dict[str, str], share: tuple[int, int, int], queue=None,
                  checked=None) -> dict:
    """Part ``i`` of a job's measured table, launched when the job starts (``launch_shares``):
    ``share`` is ``(i, own, others)``. This worker prepares the model and the calibration data
    from the spec (``PrepareCache``: a warm worker reloads no weights) while the job task
    calibrates, then deals the rows by cost as the job task deals them (``job_share``
    with the same ``own`` and ``others``) and measures part ``i``. It returns its rows, the proxy
    and the parameters it measured with, so the job task takes them only when they are its own."""
    from proxies.registry import get_proxy

    i, own, others = share
    post = Poster(queue)
    with _hold("chunk"):
        torch_threads()
        t = time.perf_counter()
        spec_d = _materialise(spec_d, texts)
        p = _prepared(spec_d, checked)
        proxy, prepared = p.proxy, time.perf_counter() - t
        params = {k: v for k, v in proxy.params.items() if k != "layers"}
        parts: list[list[int]] = []
        if proxy.chunkable and len(p.layers) >= 2:
            blocks, n_blocks = layer_blocks(p.lm.model, [l.name for l in p.layers])
            parts = job_share(row_costs(blocks, n_blocks, len(p.formats)), own, others)
        rows = parts[i] if i < len(parts) else []
        if not rows:
            return {"rows": [], "proxy": proxy.name, "params": params, "node": _node_name()}
        ctx = _spec_context(p, spec_d, _chunk_reporter(post, i, len(parts)))
        cpu = time.process_time()
        table = get_proxy(proxy.name, **{**params, "layers": rows}).compute(ctx)
        cpu = time.process_time() - cpu
    post.flush()
    return {**_rows(table, rows, proxy=proxy.name, params=params, seconds=table.timing.get("seconds"),
                    node=_node_name(), cpu_seconds=round(cpu, 3), prepare_seconds=round(prepared, 3)), "rows": rows}


def _node_name() -> str:
    """A short name of this worker's Ray node (for the table's timing record)."""
    node = _node()
    return node[0][:8] if node else "local"


def _granted_cpus() -> int:
    """The CPUs Ray granted the running task (1 outside a task)."""
    try:
        return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1) or 1))
    except Exception:  # not in a Ray worker
        return 1


def torch_threads() -> None:
    """Ray sets OMP_NUM_THREADS=1 in workers; give torch the CPUs this task was granted."""
    import torch
    torch.set_num_threads(_granted_cpus())


# ------------------------------------------------------------------- threads of a job task

def job_threads(node_cpus: float, jobs: int, chunk_cpus: float, granted: int = 1, cores: int | None = None) -> int:
    """Torch threads for a job task: its fair share of the node's CPUs that running bitplan
    chunks do not hold, ``(node_cpus - chunk_cpus) // jobs`` (``jobs``: the bitplan job tasks
    running on the node, this one included), never fewer than the ``granted`` CPUs and never
    more than the ``cores`` this process may run on. A lone job on a 2-CPU node: 2; two jobs
    there: 1 each; a job beside one 1-CPU chunk of another job: 1."""
    share = int(max(node_cpus - chunk_cpus, 0) // max(jobs, 1))
    if cores:
        share = min(share, cores)
    return max(int(granted), share, 1)


def ledger_folder(node_id: str) -> Path:
    """Where the ledger of a Ray node lives on its host: a folder of this user's per node."""
    return Path(tempfile.gettempdir()) / f"bitplan-{os.getuid()}" / "tasks" / node_id


class NodeLedger:
    """The bitplan tasks running on one Ray node: one empty file per task, named
    ``{kind}-{cpus}-{id}``, that the task holds an exclusive ``flock`` on while it runs.

    Counting tries each file's lock: a lock that can be taken belongs to a task that is gone
    (the kernel drops a dead process's locks: SIGKILL, ``ray.cancel(force=True)`` and a lost
    worker included), so its file is removed and it is not counted. A task's file gets its name
    only once locked (it is created under a dot name, locked, then renamed). Best effort: where
    the folder cannot be written, or there is no ``fcntl``, a task is simply not counted."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @contextlib.contextmanager
    def hold(self, kind: str, cpus: int) -> Iterator[None]:
        name = f"{kind}-{int(cpus)}-{uuid.uuid4().hex}"
        fd, path = None, self.folder / name
        try:
            import fcntl
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.folder / f".{name}"
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(tmp, path)
        except (ImportError, OSError):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.folder / f".{name}")
                os.close(fd)
            fd = None
        try:
            yield
        finally:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                os.close(fd)

    def running(self) -> tuple[int, int]:
        """(job tasks, CPUs held by chunk tasks) alive on the node; removes the files of the dead."""
        try:
            import fcntl
            names = os.listdir(self.folder)
        except (ImportError, OSError):
            return 0, 0
        jobs = cpus = 0
        for name in names:
            kind, _, rest = name.lstrip(".").partition("-")
            n, _, _ = rest.partition("-")
            if not n.isdigit():
                continue
            path = self.folder / name
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # held: its task runs
                    if not name.startswith("."):
                        jobs += kind == "job"
                        cpus += int(n) if kind != "job" else 0
                    continue
                # free: its task is gone (a dot name may be a task between creating and locking it)
                if not name.startswith(".") or time.time() - os.fstat(fd).st_mtime > 60:
                    os.unlink(path)
            except OSError:
                pass
            finally:
                os.close(fd)
        return jobs, cpus


_NODE_CPUS: dict[str, float] = {}


def _node() -> tuple[str, float] | None:
    """This Ray worker's node id and the node's CPUs; None outside a Ray worker."""
    if not ray.is_initialized():
        return None
    try:
        node = ray.get_runtime_context().get_node_id()
        if node not in _NODE_CPUS:
            _NODE_CPUS[node] = next((float(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes()
                                     if n.get("NodeID") == node), 0.0)
        return node, _NODE_CPUS[node]
    except Exception:  # no worker context (a driver not connected, a test calling a task's body)
        return None


@contextlib.contextmanager
def _hold(kind: str) -> Iterator[None]:
    """This task's entry in its node's ledger while the block runs (nothing outside Ray)."""
    node = _node()
    if node is None:
        yield
        return
    with NodeLedger(ledger_folder(node[0])).hold(kind, _granted_cpus()):
        yield


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class JobThreads:
    """A job task's torch threads (``job_threads`` on its node's ledger): a context holding the
    task's ledger entry; ``update`` (the job's progress calls it) sets them at every phase change
    and at most every ``every`` seconds within a phase. Does nothing outside a Ray worker."""

    def __init__(self, every: float = 5.0):
        self.every = every
        self.node = _node()
        self.granted = _granted_cpus()
        self.ledger = NodeLedger(ledger_folder(self.node[0])) if self.node else None
        self.phase: str | None = None
        self.at = 0.0
        self.threads: int | None = None
        self.seen: tuple[int, int] = (1, 0)
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "JobThreads":
        if self.ledger is not None:
            self._stack.enter_context(self.ledger.hold("job", self.granted))
        _JOB_THREADS.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _JOB_THREADS.remove(self)
        self._stack.close()

    def update(self, phase: str | None = None) -> int | None:
        """Re-evaluate on a phase change or after ``every`` seconds; the new thread count when
        it changed, else None."""
        if self.ledger is None:
            return None
        now = time.monotonic()
        if phase == self.phase and now - self.at < self.every:
            return None
        self.phase, self.at = phase, now
        self.seen = self.ledger.running()
        n = job_threads(self.node[1], self.seen[0], self.seen[1], self.granted, _cores())
        if n == self.threads:
            return None
        import torch
        torch.set_num_threads(n)
        self.threads = n
        return n

    def describe(self) -> str:
        jobs, chunk_cpus = self.seen
        return (f"{self.threads} torch threads for the job task (node: {self.node[1]:g} CPUs, {jobs} bitplan "
                f"job{'s' if jobs != 1 else ''}, {chunk_cpus} CPUs in sensitivity chunks)")


_JOB_THREADS: list[JobThreads] = []


# ------------------------------------------------------------------- sensitivity chunks

def row_costs(blocks: Sequence[int], n_blocks: int, n_formats: int) -> list[float]:
    """Estimated cost of each row of a measured table, in block forwards: one forward pass per
    format measured, each running the trunk blocks from the row's block to the end (a layer
    outside the trunk, block 0: all of them; ``proxies.blockcache`` replays the blocks before),
    plus one block's worth for what is outside the trunk (embeddings, head, loss). MiniLM-L6:
    a row of block 0 measured 2.4 s, one of block 5 0.35 s (4 formats, 32 sentences)."""
    return [float(n_formats * (max(n_blocks - b, 0) + 1)) for b in blocks]


def balance_rows(costs: Sequence[float], n_chunks: int) -> list[list[int]]:
    """Longest processing time first: rows by decreasing cost (ties: lower index first), each
    to the chunk with the least cost so far (ties: the lower chunk). Each chunk's rows sorted;
    at most one chunk per row. Within 4/3 of the best split, and much closer when rows are many
    and small next to a chunk's total; equal costs deal rows round-robin."""
    n = max(1, min(n_chunks, len(costs)))
    heap = [(0.0, i) for i in range(n)]
    parts: list[list[int]] = [[] for _ in range(n)]
    for r in sorted(range(len(costs)), key=lambda r: (-costs[r], r)):
        load, i = heapq.heappop(heap)
        parts[i].append(r)
        heapq.heappush(heap, (load + costs[r], i))
    return [sorted(p) for p in parts if p]


def job_share(costs: Sequence[float], own: int, others: int) -> list[list[int]]:
    """Rows for the job task (first) and for ``others`` one-worker chunks on other nodes: the
    rows are dealt by cost into ``own + others`` equal parts, and the job task, which measures
    with its node's ``own`` workers (torch threads), takes ``own`` of them. With no other node
    it takes every row: on its own node a chunk would only split the same CPUs between two
    processes, and pay for shipping the context (on 2 CPUs, MiniLM's table took 18.1 s in two
    chunks against 13.7 s in the job task alone)."""
    if others < 1 or len(costs) < 2:
        return [list(range(len(costs)))]
    parts = balance_rows(costs, max(own, 1) + others)
    mine = sorted(r for p in parts[: max(own, 1)] for r in p)
    return [mine] + parts[max(own, 1):] if len(parts) > max(own, 1) else [mine]


def _other_slots(resource: str = "CPU") -> list[str]:
    """One entry per ``resource`` unit (CPU or GPU) of every alive node but this task's, by node id,
    dealt round-robin over the nodes so the first chunks spread out."""
    node = _node()
    me = node[0] if node else None
    per_node = [(n["NodeID"], int(n.get("Resources", {}).get(resource, 0))) for n in ray.nodes()
                if n.get("Alive") and n.get("NodeID") != me]
    out: list[str] = []
    for k in range(max((c for _, c in per_node), default=0)):
        out += [nid for nid, c in per_node if c > k]
    return out


def _own_workers(gpu_options: dict) -> int:
    """What the job task measures with on its node: its torch threads (its share of the node's
    CPUs, ``JobThreads``), or one GPU."""
    if gpu_options:
        return 1
    import torch
    return max(1, torch.get_num_threads())


def layer_blocks(model, names: Sequence[str]) -> tuple[list[int], int]:
    """Each layer's trunk block (as ``proxies.blockcache`` finds the trunk) and the trunk's
    length; all 0 and 1 block for a model without a trunk or an exported program (the graph
    cache learns its positions only by recording), whose rows then cost the same."""
    flat = ([0] * len(names), 1)
    try:
        from proxies.blockcache import find_trunk, is_graph_model
        found = None if is_graph_model(model) else find_trunk(model)
    except Exception:  # noqa: BLE001 - an estimate: never a reason to fail a job
        return flat
    if found is None:
        return flat
    prefix = f"{found[0]}." if found[0] else ""
    out = []
    for name in names:
        head = name[len(prefix):].split(".", 1)[0] if name.startswith(prefix) else ""
        out.append(int(head) if head.isdigit() else 0)
    return out, len(found[1])


def _ship(ctx) -> list | None:
    """The job's ``ProxyContext`` (model, layers, calibration batches, quantizer) put in the
    object store once for the chunks, as ``[ObjectRef]``; None when it cannot travel that way
    (parameters off the CPU, an offloaded model's hooks, something not picklable): the chunks
    then prepare it from the spec."""
    try:
        model = ctx.model
        if any(t.device.type != "cpu" for t in (*model.parameters(), *model.buffers())):
            return None
        if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
            return None
        return [ray.put(dataclasses.replace(ctx, progress=None, map_policies=None))]
    except Exception:  # noqa: BLE001 - not picklable (an exported program's closures, ...): the old way
        return None


@ray.remote(num_cpus=1, max_retries=3)
def measure_policies(spec_d: dict, texts: dict[str, str], choices: list[list[int]], checked=None) -> list[float]:
    """Calibration loss of each policy (format index per layer): the evolved proxy's ground truth."""
    from proxies.evaluate import Evaluator

    with _hold("chunk"):
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


@dataclasses.dataclass
class Shares:
    """The other nodes' parts of a job's measured table, launched when the job starts
    (``launch_shares``): ``refs[j]`` measures part ``j + 1`` of ``job_share(costs, own, others)``."""
    refs: list
    own: int
    others: int

    def cancel(self) -> None:
        """Stop the parts not taken (the job failed, reused a table or measured no table)."""
        for r in self.refs:
            with contextlib.suppress(Exception):
                ray.cancel(r)
        self.refs = []


def launch_shares(raw: dict, spec, texts: dict[str, str], n_chunks: int, kind: str, queue=None,
                  checked=None) -> Shares | None:
    """Start the other nodes' parts of a job's measured table at once (``measure_share``), so a
    worker there prepares its model and data while the job task calibrates, and starts
    measuring with no context to wait for: shipping MiniLM's context held the other node back
    0.35-0.5 s a job (1.4 s on a cold worker) out of a 10 s phase. ``spec``: the parsed ``raw``.
    None when nothing would fan out: one chunk, no other node, or a job whose recipe (for model
    ``kind``) measures no chunkable table."""
    from proxies.registry import PROXIES
    from search.solvers import SOLVERS

    if n_chunks <= 1:
        return None
    spec = spec.with_recipe(kind)
    cls, solver = PROXIES.get(spec.proxy_name), SOLVERS.get(spec.solver_name)
    if cls is None or not cls.chunkable or solver is None or not solver.needs_table:
        return None
    opts = _gpu_options()
    slots = _other_slots("GPU" if opts else "CPU")[: n_chunks - 1]
    if not slots:
        return None
    own = _own_workers(opts)
    refs = [measure_share.options(**opts, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True))
            .remote(raw, texts, (j + 1, own, len(slots)), queue, checked) for j, node in enumerate(slots)]
    return Shares(refs, own, len(slots))


def _fan_out(spec_d: dict, texts: dict[str, str], n_chunks: int, queue, checked=None, shares: Shares | None = None):
    """A ``compute_table`` for the pipeline that spreads a chunkable proxy over at most
    ``n_chunks`` workers (and the evolved proxy's ground-truth measurements over Ray tasks). The
    rows are split by estimated cost (``job_share``); the job task measures its node's share
    itself, on its torch threads. The other parts are the ``shares`` launched at the job's start
    when there are some; else ``measure_rows`` tasks on the other nodes' CPUs measure them on its
    context from the object store (``measure_chunk`` from the spec, with the job's ``checked``,
    when the context cannot travel). A share that failed, or measured other rows or parameters
    than the job task's, is measured by the job task after its own part. The numbers are the
    in-process table's: every row is measured against the same base, whichever chunk it is in."""
    from proxies.registry import get_proxy
    from search.table import SensitivityTable

    post = Poster(queue)

    def in_process(proxy, ctx):
        if shares is not None:
            shares.cancel()
        return proxy.compute(ctx)

    def compute(proxy, ctx):
        if proxy.name == "evolved" and n_chunks > 1:
            ctx.map_policies = _policy_mapper(spec_d, texts, n_chunks, ctx, checked)
        if not proxy.chunkable or n_chunks <= 1 or len(ctx.layers) < 2:
            return in_process(proxy, ctx)
        t0 = time.perf_counter()
        blocks, n_blocks = layer_blocks(ctx.model, [l.name for l in ctx.layers])
        costs = row_costs(blocks, n_blocks, len(ctx.formats))
        # the chunks measure with the proxy's own parameters (the pipeline may have set some the
        # spec leaves to defaults), so every row comes from the same table definition
        params = {k: v for k, v in proxy.params.items() if k != "layers"}
        opts = _gpu_options()
        if shares is not None:
            parts = job_share(costs, shares.own, shares.others)
            slots: list[str] = []
        else:
            # chunks go to the other nodes' CPUs (GPUs); the job task measures its node's share itself
            slots = _other_slots("GPU" if opts else "CPU")[: max(n_chunks - 1, 0)]
            parts = job_share(costs, _own_workers(opts), len(slots))
        if len(parts) == 1:
            return in_process(proxy, ctx)
        n = len(parts)
        shipped, how = None, "prepared by each chunk from the spec at the job's start"
        if shares is not None:
            refs = shares.refs[: n - 1]
        else:
            placed = [{**opts, "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=True)}
                      for node in slots[: n - 1]]
            shipped = _ship(ctx)
            if shipped is not None:
                how = "shipped through the object store"
                refs = [measure_rows.options(**placed[i - 1]).remote(shipped, proxy.name, params, rows, i, n, queue)
                        for i, rows in enumerate(parts) if i]
            else:
                how = "prepared by each chunk"
                chunk_spec = {**spec_d, "proxy": proxy.name, "proxy_params": params}
                refs = [measure_chunk.options(**placed[i - 1]).remote(chunk_spec, texts, rows, i, n, queue, checked)
                        for i, rows in enumerate(parts) if i]
        ctx.report(0.0, f"{n} chunks of {'/'.join(str(len(p)) for p in parts)} rows, split by cost; the context {how}")
        values = np.zeros((len(ctx.layers), len(ctx.formats)))
        stderr: np.ndarray | None = np.zeros_like(values)
        chunk_seconds: list[float | None] = [None] * n
        chunk_nodes: list[str | None] = [_node_name()] + [None] * (n - 1)
        chunk_cpu: list[float | None] = [None] * n
        ready_in: list[float | None] = [0.0] + [None] * (n - 1)  # seconds to the chunk's context
        redo: list[int] = []  # rows of shares that failed or measured something else: measured here
        errors: list[str] = []

        def take(rows: list[int], got: dict) -> None:
            nonlocal stderr
            values[rows] = np.array(got["values"])
            if got["stderr"] is None:
                stderr = None
            elif stderr is not None:
                stderr[rows] = np.array(got["stderr"])

        def measure_here(rows: list[int], progress) -> SensitivityTable:
            return get_proxy(proxy.name, **{**params, "layers": rows}).compute(
                dataclasses.replace(ctx, progress=progress, map_policies=None))

        pending, where = list(refs), {r: i + 1 for i, r in enumerate(refs)}
        try:
            t, cpu = time.perf_counter(), time.process_time()
            mine = measure_here(parts[0], _chunk_reporter(post, 0, n))
            chunk_seconds[0] = round(time.perf_counter() - t, 3)
            chunk_cpu[0] = round(time.process_time() - cpu, 3)
            take(parts[0], _rows(mine, parts[0]))
            ctx.report(1 / n, f"1/{n} chunks")
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                i = where[ready[0]]
                try:
                    got = ray.get(ready[0])
                except Exception as e:  # noqa: BLE001 - a share's failure costs time, not the job
                    if shares is None:
                        raise
                    errors.append(f"chunk {i}: {(str(e).strip().splitlines() or [type(e).__name__])[-1][:200]}")
                    redo += parts[i]
                    continue
                if shares is not None and (got.get("rows") != parts[i] or got.get("proxy") != proxy.name
                                           or got.get("params") != params):
                    errors.append(f"chunk {i}: measured other rows or parameters than the job's")
                    redo += parts[i]
                    continue
                take(parts[i], got)
                chunk_seconds[i], chunk_nodes[i], chunk_cpu[i] = got.get("seconds"), got.get("node"), got.get("cpu_seconds")
                ready_in[i] = got.get("prepare_seconds" if shares is not None else "fetch_seconds")
                ctx.report(1 - len(pending) / n, f"{n - len(pending)}/{n} chunks")
            if redo:
                ctx.report(1 - len(redo) / len(ctx.layers), f"{len(redo)} rows of chunks that failed, measured here")
                redo.sort()
                take(redo, _rows(measure_here(redo, None), redo))
        finally:
            for r in pending:  # the job failed or was stopped: its other chunks need not run on
                with contextlib.suppress(Exception):
                    ray.cancel(r)
            if shares is not None:
                shares.refs = []
            del shipped  # the object store frees the context once the chunks are done with it
            if _JOB_THREADS:
                _JOB_THREADS[-1].at = 0.0  # the job's next progress re-evaluates its threads
        # per chunk: its rows, seconds measuring, CPU seconds, seconds to its context (taking it
        # from the object store, or preparing it from the spec at the job's start; 0: the job
        # task's own) and node; the base loss is the same in every chunk
        info = {"chunks": n, "rows_per_chunk": [len(p) for p in parts], "shipped": how.startswith("shipped"),
                "launched_at_start": shares is not None,
                "chunk_seconds": chunk_seconds, "chunk_cpu_seconds": chunk_cpu,
                ("chunk_prepare_seconds" if shares is not None else "chunk_fetch_seconds"): ready_in,
                "chunk_nodes": chunk_nodes,
                **({"measured_here": len(redo), "chunk_errors": errors} if redo else {}),
                **{k: mine.diagnostics[k] for k in ("base_loss", "trunk") if k in mine.diagnostics}}
        return SensitivityTable(ctx.layers, ctx.formats, values, proxy.name, proxy.table_params(ctx), ctx.calibration,
                                stderr, {"seconds": time.perf_counter() - t0, "chunks": n}, ctx.model_sha256, info)
    return compute


@ray.remote(num_cpus=1, max_retries=2)
def run_job(spec_ds: list[dict], texts: dict[str, str], table_d: dict | None,  n_chunks: int, queue=None) -> Outcome:
    """Run a job: one policy per budget point, one sensitivity table shared by all of them. The
    API validated its specs at submission: they are parsed here once (``Checked.accepted``) and
    the pipeline and the chunks take that instead of validating again. Torch runs on the job's
    share of its node (``JobThreads``); each change of the thread count is a progress message."""
    from search.spec import SearchSpec
    from search.table import SensitivityTable
    from search.validate import Checked
    from workers.pipeline import run_search
    from workers.sources import load_model

    torch_threads()
    post = Poster(queue)

    with JobThreads() as threads:
        def progress(phase: str, fraction: float, message: str) -> None:
            if threads.update(phase) is not None:
                post(Progress(phase, fraction, threads.describe()))
            post(Progress(phase, fraction, message))

        try:
            table = SensitivityTable.from_dict(table_d) if table_d else None
            lm, out, computed = None, [], False
            specs = [SearchSpec(**_materialise(raw, texts)) for raw in spec_ds]
            checked = Checked.accepted(specs)
            for i, (raw, spec) in enumerate(zip(spec_ds, specs)):
                lm = lm or load_model(spec.model)
                if table is None and threads.update("load") is not None:  # the share the other parts are dealt against
                    post(Progress("load", 0.0, threads.describe()))
                shares = launch_shares(raw, spec, texts, n_chunks, lm.kind, queue, checked) if table is None else None
                try:
                    res = run_search(spec, progress, loaded=lm, table=table, checked=checked,
                                     compute_table=_fan_out(raw, texts, n_chunks, queue, checked, shares))
                finally:
                    if shares is not None:
                        shares.cancel()  # parts the pipeline did not take (it failed, or measured no table)
                computed = computed or (table is None and res.table is not None)
                table = res.table or table  # the joint solver makes no table
                out.append(PointResult(json.loads(res.policy.to_json(None)), res.timings))
                post(PointDone(i + 1, len(spec_ds)))
        except _user_errors() as e:
            return Failed(str(e).splitlines()[0] if str(e) else type(e).__name__)
        finally:
            post.flush()
    return Done(tuple(out), table.to_dict() if computed and table is not None else None)
