"""The server's job loop: claim queued jobs, run them as Ray tasks, and write their progress and
results to the store.

One thread per server. Each pass it (1) re-queues jobs whose server stopped heart-beating,
(2) claims queued jobs up to ``max_running``, (3) drains every running job's progress queue
into the store, (4) stops jobs whose cancel was requested (``ray.cancel(force=True)``), and
(5) records finished ones. Ray retries a job whose worker died (``max_retries``); a failure
that outlives the retries is recorded with its reason. Progress and outcomes arrive as typed
messages (``workers.messages``)."""
from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

import ray
from ray.util.queue import Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from search.defaults import PHASES
from service.config import Settings
from service.schemas import JobCreate
from service.store import Store
from workers.messages import ChunkProgress, Done, Failed, Message, PointDone, Progress

log = logging.getLogger("bitplan.dispatcher")

# share of a budget point's progress bar per phase, from the default recipe's timings on MiniLM
# (bench/speed.py): the sensitivity table and refine's judged candidates take most of the time
WEIGHTS = dict(zip(PHASES, (0.03, 0.03, 0.45, 0.02, 0.1, 0.37), strict=True))
_START = {p: sum(list(WEIGHTS.values())[:i]) for i, p in enumerate(WEIGHTS)}
DRAIN_SECONDS = 0.5  # how often a running job's progress queue is read


def overall(phase: str, fraction: float, point: int, points: int) -> float:
    within = _START.get(phase, 0.0) + WEIGHTS.get(phase, 0.0) * min(max(fraction, 0.0), 1.0)
    return min((point + min(within, 1.0)) / max(points, 1), 0.999)


@dataclass
class Running:
    job_id: str
    ref: ray.ObjectRef
    queue: Queue
    points: int
    cached: bool
    point: int = 0
    phase: str | None = None
    phase_point: int = 0  # the budget point ``phase`` belongs to
    shown: float = 0.0  # the progress last written: the bar never goes back
    chunks: dict[int, float] = field(default_factory=dict)
    last_write: float = 0.0
    last_log: float = 0.0
    last_drain: float = 0.0
    cancelling: bool = False


class Dispatcher:
    def __init__(self, store: Store, settings: Settings):
        self.store = store
        self.settings = settings
        self.owner = f"{socket.gethostname()}-{uuid.uuid4().hex[:12]}"
        self.running: dict[str, Running] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_recover = 0.0
        self._last_beat = 0.0
        self.wake = threading.Event()

    # lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="bitplan-dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Graceful shutdown: stop the Ray work and put running jobs back in the queue at once
        (no lease wait), so the next server start runs them again."""
        self._stop.set()
        self.wake.set()
        if self._thread:
            self._thread.join(timeout=10)
        for r in list(self.running.values()):
            try:
                ray.cancel(r.ref, force=True, recursive=True)
            except Exception:
                pass
        # only this server's jobs: another live server's running jobs are its own business
        for jid, action in self.store.release(self.owner, self.settings.max_attempts):
            log.info("job %s %s (this server is shutting down)", jid, action)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the loop must survive a DB hiccup; the next pass retries
                log.exception("dispatcher pass failed")
            self.wake.wait(self.settings.poll_seconds)
            self.wake.clear()

    # one pass -----------------------------------------------------------------------------
    def tick(self) -> None:
        now = time.monotonic()
        if now - self._last_recover > max(self.settings.lease_seconds / 4, 0.5):
            self._last_recover = now
            for jid, action in self.store.recover(self.owner, self.settings.lease_seconds, self.settings.max_attempts):
                log.warning("job %s %s (its server stopped heart-beating)", jid, action)
        for job in self.store.claim(self.owner, self.settings.max_running - len(self.running)):
            try:
                self._launch(job)
            except Exception as e:
                log.exception("could not start job %s", job.id)
                self.store.fail(job.id, self.owner, f"could not start on Ray: {type(e).__name__}: {e}")
        for jid in self.store.cancel_requested(self.owner):
            r = self.running.get(jid)
            if r and not r.cancelling:
                r.cancelling = True
                ray.cancel(r.ref, force=True, recursive=True)
        for r in list(self.running.values()):
            self._drain(r)
        self._collect()
        if now - self._last_beat > 2.0:
            self._last_beat = now
            self.store.heartbeat(self.owner, list(self.running))

    def _launch(self, job) -> None:
        from service.jobspec import launch_specs
        from workers.ray_jobs import _gpu_options, run_job

        model = self.store.get_model(job.model_id)
        # the API validated the request when it created the job: map it to specs, check nothing again
        specs, texts = launch_specs(JobCreate.model_validate(job.request), model.ref, model.kind, self.settings)
        cached = self.store.table_by_key(job.sensitivity_key)
        node = ray.get_runtime_context().get_node_id()
        queue = Queue(maxsize=10_000, actor_options={
            "num_cpus": 0, "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=True)})
        chunks = self.settings.sensitivity_chunks or max(1, int(ray.cluster_resources().get("CPU", 1)))
        ref = run_job.options(**_gpu_options()).remote(specs, texts, cached.data if cached else None, chunks, queue)
        self.running[job.id] = Running(job.id, ref, queue, len(specs), cached is not None)
        msg = "sensitivity table reused from cache" if cached else f"dispatched to Ray ({chunks} sensitivity chunks)"
        self.store.progress(job.id, self.owner, "load", 0.0, msg, log=True)

    def _drain(self, r: Running, force: bool = False) -> None:
        """Write the job's queued messages to the store: every phase change at once and logged,
        the rest at most every 0.3 s (logged every 2 s), a finished budget point at once and logged.
        The queue is read at most every ``DRAIN_SECONDS`` (each read is two calls to its actor),
        and once more, ``force``d, when the job has ended."""
        now = time.monotonic()
        if not force and now - r.last_drain < DRAIN_SECONDS:
            return
        r.last_drain = now
        try:
            items: list[Message] = r.queue.get_nowait_batch(r.queue.qsize())
        except Exception:
            items = []
        if not items:
            return
        last: Progress | PointDone | None = None
        point_done = False
        for m in items:
            match m:
                case PointDone():
                    r.point = min(m.done, r.points)
                    point_done = True
                    last = m
                case ChunkProgress() if not self._stale(r, m.phase):
                    last = self._phase_progress(r, self._chunks_progress(r, m), last)
                case Progress() if not self._stale(r, m.phase):
                    last = self._phase_progress(r, m, last)
        now = time.monotonic()
        if last is None or (now - r.last_write < 0.3 and not point_done):
            return
        log_it = point_done or now - r.last_log > 2.0
        phase = r.phase or "load"
        prog = overall(phase, last.fraction, r.point, r.points) if isinstance(last, Progress) else \
            overall("load", 0.0, r.point, r.points)
        self._write(r, phase, prog, last.message, log_it)
        r.last_write = now
        if log_it:
            r.last_log = now

    def _write(self, r: Running, phase: str, progress: float, message: str, log: bool) -> None:
        """The job's phase and progress into the store, the progress never below the last written."""
        r.shown = max(progress, r.shown)
        self.store.progress(r.job_id, self.owner, phase, r.shown, message, log=log)

    @staticmethod
    def _stale(r: Running, phase: str) -> bool:
        """Whether a message of ``phase`` comes from before the phase shown. A job's task and its
        sensitivity chunks post through separate queue handles, so a chunk's first message can
        reach the queue ahead of the job's own last calibrate messages; shown as they come, the
        bar went from sensitivity back to calibrate."""
        if r.phase is None or phase not in PHASES or r.phase not in PHASES:
            return False
        return (r.point, PHASES.index(phase)) < (r.phase_point, PHASES.index(r.phase))

    @staticmethod
    def _chunks_progress(r: Running, m: ChunkProgress) -> Progress:
        """The sensitivity phase's progress is the mean of its chunks' latest fractions (a chunk
        not heard from yet counts as 0)."""
        r.chunks[m.chunk] = m.fraction
        return Progress(m.phase, sum(r.chunks.values()) / m.of, m.message)

    def _phase_progress(self, r: Running, p: Progress, last: Progress | PointDone | None) -> Progress:
        """Every phase change goes into the log, even inside one batch: the old phase's last word
        (when this batch has it), then the new phase's first. Returns ``p``, the batch's latest."""
        if p.phase != r.phase:
            # a Progress before this one in the batch is of r.phase: the previous one made it so
            if isinstance(last, Progress) and r.phase is not None:
                self._write(r, r.phase, overall(r.phase, last.fraction, r.point, r.points), last.message, True)
            r.phase, r.phase_point = p.phase, r.point
            self._write(r, p.phase, overall(p.phase, p.fraction, r.point, r.points), p.message, True)
            r.last_log = r.last_write = time.monotonic()
        return p

    def _collect(self) -> None:
        if not self.running:
            return
        refs = [r.ref for r in self.running.values()]
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in done:
            r = next(x for x in self.running.values() if x.ref == ref)
            self._drain(r, force=True)
            self._finish(r)
            del self.running[r.job_id]
            try:
                ray.kill(r.queue.actor)
            except Exception:
                pass

    def _finish(self, r: Running) -> None:
        from ray.exceptions import RayError, TaskCancelledError

        try:
            out = ray.get(r.ref)
        except TaskCancelledError:
            self.store.cancelled(r.job_id, self.owner, "cancelled; its Ray work was stopped")
            return
        except RayError as e:
            if r.cancelling:
                self.store.cancelled(r.job_id, self.owner, "cancelled; its Ray work was stopped")
                return
            reason = str(e).strip().splitlines()
            tail = next((line for line in reversed(reason) if line.strip()), type(e).__name__)
            self.store.fail(r.job_id, self.owner, f"{type(e).__name__}: {tail}"[:2000])
            return
        if r.cancelling:
            self.store.cancelled(r.job_id, self.owner, "cancelled")
            return
        if isinstance(out, Failed):
            self.store.fail(r.job_id, self.owner, out.error)
            return
        self._succeed(r, out)

    def _succeed(self, r: Running, out: Done) -> None:
        """Store the policies with the phase timings summed over budget points, and the table the
        job computed (else link the cached one it used)."""
        job = self.store.get_job(r.job_id)
        table_id = None
        if out.table is not None:
            table_id = self.store.put_table(job.sensitivity_key, job.model_id, out.table)
        else:
            found = self.store.table_by_key(job.sensitivity_key)
            table_id = found.id if found else None
        timings: dict[str, float] = {}
        for res in out.results:
            for k, v in res.timings.items():
                timings[k] = timings.get(k, 0.0) + float(v)
        self.store.succeed(r.job_id, self.owner, [res.policy for res in out.results], timings, table_id, r.cached)
