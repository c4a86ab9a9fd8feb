"""Sensitivity fan-out bench: the default MiniLM job's measured proxy (builtin:minilm-l6, bits
2,3,4,8 × g64: 36 layers × 4 formats, 32 calibration sentences) with 1 Ray worker (one 1-CPU
node) and with 2 (two 1-CPU nodes), each a ``ray.cluster_utils.Cluster`` whose head holds no
CPU, so only the worker nodes run tasks.

Each run is what the service does with a job: the driver submits the job task ``run_job`` with as
many sensitivity chunks as the cluster has CPUs (``service.dispatcher``), and the job task runs
the pipeline with the job-level fan-out of ``workers/ray_jobs.py``; the figure is the job's
``timings["sensitivity"]``. Repeat ``r`` uses seed ``r`` (new calibration data: the table is
measured again) on the same cluster. Before the first, the workers are warmed as the server
warms them when it connects to Ray (``workers/warm.py``: the engine imported in one worker per
CPU; code without it meets fresh processes), so repeat 0 is a server's first job and later
repeats meet workers that have run one. Only interfaces that every version of ``workers/ray_jobs.py`` has are used
(``run_job(specs, texts, table, n_chunks, queue)`` and its ``Done``), so the same file measures
an older checkout too: copy it into that checkout's ``bench/`` and run it there.

    python bench/speed_ray.py [--repeats 2] [--out bench/results/speed_ray.json]

Importing this module runs nothing."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SPEC = dict(model="builtin:minilm-l6", budgets={"avg_bits": 3.4}, bits=[2, 3, 4, 8], group_size=64,
            proxy="measured", solver="ilp", refine=False, n_eval=8, device="cpu")
WORKERS = (1, 2)


def _spec(seed: int) -> dict:
    from search.spec import SearchSpec
    return SearchSpec(**SPEC, seed=seed).model_dump()


def _cluster(workers: int):
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0})
    for _ in range(workers):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    return cluster


def _prewarm(ray) -> int:
    """What the server does when it connects to Ray (``workers/warm.py``): one warm worker per
    CPU, here awaited, as on a server that has been up a few seconds. Code without it: 0."""
    try:
        from workers.warm import prewarm
    except ImportError:
        return 0
    return len(ray.get(prewarm()))


def _run(workers: int, repeats: int, warm: bool = True) -> list[dict]:
    """``repeats`` jobs on a fresh cluster of ``workers`` 1-CPU nodes: sensitivity seconds each
    (``warm``: after warming the workers as the server does)."""
    import logging

    import ray

    from workers.ray_jobs import run_job

    cluster = _cluster(workers)
    try:
        ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
        chunks = max(1, int(ray.cluster_resources().get("CPU", 1)))  # as service.dispatcher does
        warmed = _prewarm(ray) if warm else 0
        rows = []
        for r in range(repeats):
            t = time.perf_counter()
            out = ray.get(run_job.remote([_spec(r)], {}, None, chunks, None))
            wall = time.perf_counter() - t
            if not hasattr(out, "results"):
                raise RuntimeError(f"the job failed: {out}")
            timings = out.results[0].timings
            table = out.table or {}
            rows.append({"workers": workers, "chunks": chunks, "repeat": r, "warmed": warmed,
                         "seconds": float(timings["sensitivity"]),
                         "job_seconds": wall, "load_1min": os.getloadavg()[0],
                         "table_timing": {**table.get("timing", {}), **table.get("diagnostics", {})},
                         "table": table.get("values")})
            print(f"workers {workers} repeat {r}: sensitivity {timings['sensitivity']:.1f} s, job {wall:.1f} s, "
                  f"load {os.getloadavg()[0]:.2f}, table timing {rows[-1]['table_timing']}", flush=True)
        return rows
    finally:
        ray.shutdown()
        cluster.shutdown()


def bench_fanout(out: dict, repeats: int = 1) -> None:
    """Time the sensitivity phase with 1 and 2 Ray workers; print a markdown table and store its
    rows in ``out["fanout"]``. A row's seconds: the one run when ``repeats`` is 1 (a server's first
    job), else the least of the repeats after the first (workers that ran a job; the least, as the
    figure least disturbed by whatever else the machine runs). Each row keeps its runs (seconds,
    the job's wall time, the load average after, the table's timing and diagnostics: per chunk
    rows, seconds, CPU seconds, seconds taking the context from the object store, node);
    ``out["fanout_tables"]`` keeps each run's table values, so two versions can be compared."""
    load = os.getloadavg()
    runs = {w: _run(w, repeats) for w in WORKERS}
    pick = (lambda rs: rs[0]) if repeats == 1 else (lambda rs: min(rs[1:], key=lambda r: r["seconds"]))
    base = pick(runs[WORKERS[0]])["seconds"]
    print("\n### Sensitivity fan-out: measured proxy on MiniLM (36 layers × 4 formats, 32 calibration sentences)")
    print(f"{os.cpu_count()} CPUs; load average before: {load[0]:.2f} (1 min), {load[1]:.2f} (5 min); "
          f"after: {os.getloadavg()[0]:.2f}; {'one run' if repeats == 1 else f'best of repeats 2..{repeats}'}")
    print("| workers | seconds | speed-up |\n|---|---|---|")
    rows = []
    for w in WORKERS:
        best = pick(runs[w])
        print(f"| {w} | {best['seconds']:.1f} | {base / best['seconds']:.2f}× |")
        rows.append({"workers": w, "seconds": best["seconds"], "speedup": base / best["seconds"],
                     "runs": [{k: v for k, v in r.items() if k != "table"} for r in runs[w]]})
    print("\n| workers | repeat | seconds | job seconds | load (1 min) after |\n|---|---|---|---|---|")
    for w in WORKERS:
        for r in runs[w]:
            print(f"| {w} | {r['repeat']} | {r['seconds']:.1f} | {r['job_seconds']:.1f} | {r['load_1min']:.2f} |")
    out["fanout"] = rows
    out["fanout_tables"] = {f"{w}x{r['repeat']}": r["table"] for w in WORKERS for r in runs[w]}
    out["fanout_load"] = {"before": load[:2], "after": os.getloadavg()[:2]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/speed_ray.json")
    args = ap.parse_args()
    out: dict = {"cpus": os.cpu_count(), "root": str(ROOT)}
    bench_fanout(out, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
