"""Service bench: with 300 jobs stored, GET /v1/jobs/{id} (p50/p99) and GET /v1/jobs?limit=50
(p99) at 50 concurrent clients, and /healthz p99 measured by a separate prober process while
those 50 clients run, side by side for SQLite and PostgreSQL; submissions per second; and the
speed-up of the sensitivity phase with 1 vs 2 Ray worker processes. Starts real servers on
127.0.0.1.

    python bench/service.py [--backends sqlite,postgresql] [--skip-speedup] [--sweep]

The latency servers run with BITPLAN_MAX_RUNNING=0 so queued jobs stay queued and no job work
competes with the requests being timed. On a machine with 2 or more CPUs the server (and the
local Ray it starts) is pinned to CPU 0 and this process, its load generator and the prober to
CPU 1, so the two sides do not take each other's cycles; each table says how busy each CPU was."""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.launcher import ServerProcess, free_port  # noqa: E402

PG_ADMIN = os.environ.get("BITPLAN_TEST_PG", "postgresql://127.0.0.1:5432/test")
N_JOBS = 300
CLIENTS = 50
TARGETS = {"job_p99_ms": 20.0, "list_p99_ms": 60.0, "healthz_p99_ms": 10.0}
SERVER_CPUS, LOAD_CPUS = {0}, {1}


def pinned() -> bool:
    return (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity")


class Server(ServerProcess):
    """``bitplan serve`` on a free port with its own var folder and database, as a context."""

    def __init__(self, var: Path, url: str, pin: bool = False, **env):
        full = {**os.environ, "BITPLAN_VAR_DIR": str(var), "BITPLAN_DATABASE_URL": url, **env}
        full.pop("BITPLAN_API_TOKEN", None)
        super().__init__(free_port(), var / "server.log", full, cwd=ROOT, cpus=SERVER_CPUS if pin and pinned() else None)

    def __enter__(self):
        return self.start(timeout=180)

    def __exit__(self, *exc):
        self.stop()


# --------------------------------------------------------------------------- machine and CPU use
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_times() -> dict[int, tuple[int, int]]:
    """(busy, total) jiffies per CPU from /proc/stat; empty where there is none."""
    out = {}
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = list(map(int, vals))
                idle = v[3] + (v[4] if len(v) > 4 else 0)
                out[int(name[3:])] = (sum(v) - idle, sum(v))
    except OSError:
        pass
    return out


def busy(before: dict, after: dict) -> dict[int, float]:
    return {c: (after[c][0] - before[c][0]) / max(after[c][1] - before[c][1], 1) for c in after if c in before}


# --------------------------------------------------------------------------- load and probe
async def _one_request(reader, writer, host: str, path: str) -> tuple[int, float]:
    t = time.perf_counter()
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    await reader.readexactly(length)
    return status, time.perf_counter() - t


async def latency(url: str, path_of, clients: int, requests_per_client: int) -> tuple[list[float], float]:
    """Closed-loop clients, one keep-alive HTTP/1.1 connection each; (latencies, wall seconds).
    A minimal raw client: a general-purpose async HTTP client spends more CPU per request than
    the server does."""
    host, port = url.split("//")[1].split(":")
    times: list[float] = []

    async def one(i: int):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for k in range(requests_per_client):
                status, dt = await _one_request(reader, writer, host, path_of(i, k))
                if status != 200:
                    raise RuntimeError(f"HTTP {status} for {path_of(i, k)}")
                times.append(dt)
        finally:
            writer.close()
    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(clients)))
    return times, time.perf_counter() - t0


def _probe(url: str, interval: float, stop, out) -> None:
    """The /healthz prober (its own process): one keep-alive connection, a request every
    ``interval`` seconds until ``stop`` is set; sends the latencies back through ``out``."""
    host, port = url.split("//")[1].split(":")
    times: list[float] = []
    with socket.create_connection((host, int(port))) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = s.makefile("rb")
        while not stop.is_set():
            t = time.perf_counter()
            s.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            length = 0
            while (line := f.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length"):
                    length = int(line.split(b":", 1)[1])
            f.read(length)
            times.append(time.perf_counter() - t)
            time.sleep(interval)
    out.send(times)


@dataclass
class Measured:
    p50_ms: float
    p99_ms: float
    requests: int
    per_second: float
    healthz_p99_ms: float
    healthz_probes: int
    cpu_busy: dict[int, float]
    load_1min: float  # the machine's load average right after: anything else running shows here


def measure_under_probe(url: str, path_of, clients: int, per_client: int) -> Measured:
    """The load, with the /healthz prober running for exactly as long as the load does."""
    ctx = mp.get_context("fork")
    stop, (recv, send) = ctx.Event(), ctx.Pipe(duplex=False)
    prober = ctx.Process(target=_probe, args=(url, 0.01, stop, send), daemon=True)
    prober.start()
    time.sleep(0.2)  # the prober is connected before the load starts
    before = cpu_times()
    times, wall = asyncio.run(latency(url, path_of, clients, per_client))
    after = cpu_times()
    stop.set()
    probes = np.array(recv.recv()) * 1000
    prober.join(timeout=10)
    t = np.array(times) * 1000
    return Measured(float(np.percentile(t, 50)), float(np.percentile(t, 99)), len(t), len(t) / wall,
                    float(np.percentile(probes, 99)) if len(probes) else float("nan"), len(probes),
                    busy(before, after), os.getloadavg()[0])


async def submissions(url: str, model_id: str, n: int, clients: int) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        sem = asyncio.Semaphore(clients)

        async def one(i: int):
            async with sem:
                r = await c.post("/v1/jobs", json={"model_id": model_id, "budgets": {"avg_bits": 3.0 + i * 1e-4}},
                                 headers={"Idempotency-Key": uuid.uuid4().hex})
                r.raise_for_status()
        t = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - t)


# --------------------------------------------------------------------------- one backend
def _database(backend: str, tmp: Path) -> tuple[str, str | None]:
    if backend == "sqlite":
        return f"sqlite:///{tmp / 'bitplan.db'}", None
    import psycopg
    name = f"bitplan_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}", name


def _drop(name: str | None) -> None:
    if name:
        import psycopg
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _stored_jobs(srv: Server) -> tuple[float, list[str]]:
    model = httpx.post(f"{srv.url}/v1/models", json={"ref": "builtin:digits-cnn"}, timeout=300).json()["id"]
    rate = asyncio.run(submissions(srv.url, model, N_JOBS, 10))
    ids = [j["id"] for j in httpx.get(f"{srv.url}/v1/jobs", params={"limit": 500}).json()["items"]]
    assert len(ids) == N_JOBS, len(ids)
    return rate, ids


def bench_backend(backend: str, sweep: bool) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"bitplan-bench-{backend}-"))
    url, db_name = _database(backend, tmp)
    try:
        with Server(tmp, url, pin=True, BITPLAN_MAX_RUNNING="0") as srv:
            rate, ids = _stored_jobs(srv)
            job = lambda i, k: f"/v1/jobs/{ids[(i * 7 + k) % len(ids)]}"
            page = lambda i, k: "/v1/jobs?limit=50"
            asyncio.run(latency(srv.url, job, CLIENTS, 5))  # warm-up: connections, caches, thread pool
            asyncio.run(latency(srv.url, page, CLIENTS, 2))
            out = {"submissions_per_s": rate, "job": measure_under_probe(srv.url, job, CLIENTS, 100).__dict__,
                   "list": measure_under_probe(srv.url, page, CLIENTS, 30).__dict__}
            if sweep:
                out["sweep"] = _sweep(srv.url, job, page)
            return out
    finally:
        _drop(db_name)


def _sweep(url: str, job, page) -> list[dict]:
    rows = []
    for name, path_of in (("GET /v1/jobs/{id}", job), ("GET /v1/jobs?limit=50", page)):
        for clients in (1, 10, 50):
            t, _ = asyncio.run(latency(url, path_of, clients, max(20, 1000 // clients)))
            t = np.array(t) * 1000
            rows.append({"endpoint": name, "clients": clients, "requests": int(len(t)),
                         "p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99))})
    return rows


# --------------------------------------------------------------------------- tables
def _mark(value: float, target: float | None) -> str:
    return f"{value:.1f}" if target is None else f"{value:.1f} {'✓' if value <= target else '✗'}"


def print_latency(results: dict) -> None:
    names = list(results)
    print(f"\n### Latency at {CLIENTS} closed-loop clients, {N_JOBS} jobs stored "
          f"(✓/✗: target met; ms unless stated)")
    print("| metric | target | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    rows = [("GET /v1/jobs/{id} p50", None, lambda r: r["job"]["p50_ms"]),
            ("GET /v1/jobs/{id} p99", TARGETS["job_p99_ms"], lambda r: r["job"]["p99_ms"]),
            ("/healthz p99 during the /v1/jobs/{id} load", TARGETS["healthz_p99_ms"], lambda r: r["job"]["healthz_p99_ms"]),
            ("GET /v1/jobs?limit=50 p50", None, lambda r: r["list"]["p50_ms"]),
            ("GET /v1/jobs?limit=50 p99", TARGETS["list_p99_ms"], lambda r: r["list"]["p99_ms"]),
            ("/healthz p99 during the list load", TARGETS["healthz_p99_ms"], lambda r: r["list"]["healthz_p99_ms"])]
    for label, target, get in rows:
        t = "—" if target is None else f"≤ {target:.0f}"
        print(f"| {label} | {t} | " + " | ".join(_mark(get(results[n]), target) for n in names) + " |")
    for kind, label in (("job", "GET /v1/jobs/{id}"), ("list", "GET /v1/jobs?limit=50")):
        print(f"| {label} throughput (req/s) | — | " + " | ".join(f"{results[n][kind]['per_second']:.0f}" for n in names) + " |")
        print(f"| CPU busy during {label} (per CPU) | — | " + " | ".join(
            ", ".join(f"cpu{c} {v:.0%}" for c, v in sorted(results[n][kind]["cpu_busy"].items())) for n in names) + " |")
    print("| 1-min load average after each load | — | " + " | ".join(
        f"{results[n]['job']['load_1min']:.1f}, {results[n]['list']['load_1min']:.1f}" for n in names) + " |")
    print("| submissions/s (10 clients) | — | " + " | ".join(f"{results[n]['submissions_per_s']:.1f}" for n in names) + " |")


def print_sweep(results: dict) -> None:
    print("\n| backend | endpoint | clients | requests | p50 ms | p99 ms |\n|---|---|---|---|---|---|")
    for name, r in results.items():
        for row in r.get("sweep", []):
            print(f"| {name} | {row['endpoint']} | {row['clients']} | {row['requests']} | {row['p50_ms']:.1f} | "
                  f"{row['p99_ms']:.1f} |")


def bench_speedup(out: dict) -> None:
    print("\n### Sensitivity phase: measured proxy on MiniLM (36 layers × 4 formats, 32 calibration sentences)")
    print("| Ray worker processes | cold (first job) s | warm (second job) s | speed-up (warm) |")
    print("|---|---|---|---|")
    rows, base = [], None
    from service.client import Client
    for chunks in (1, 2):
        tmp = Path(tempfile.mkdtemp(prefix="bitplan-bench-speedup-"))
        with Server(tmp, f"sqlite:///{tmp / 'bitplan.db'}", BITPLAN_RAY_NUM_CPUS="2",
                    BITPLAN_SENSITIVITY_CHUNKS=str(chunks)) as srv, Client(srv.url, timeout=600) as c:
            m = c.register_model("builtin:minilm-l6")
            secs = []
            for seed in (0, 1):  # a new seed draws new calibration data: the table is recomputed
                job = c.submit(m.id, {"avg_bits": 3.4}, formats={"bits": [2, 3, 4, 8], "group_size": 64},
                               proxy="measured", solver="ilp", refine=False, seed=seed,
                               evaluation={"n_samples": 8})
                secs.append(c.wait(job.id, timeout=3600, poll_interval=1).timings["sensitivity"])
        base = base or secs[1]
        print(f"| {chunks} | {secs[0]:.1f} | {secs[1]:.1f} | {base / secs[1]:.2f}× |")
        rows.append({"workers": chunks, "cold_seconds": secs[0], "warm_seconds": secs[1], "speedup": base / secs[1]})
    out["speedup"] = rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--skip-speedup", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--sweep", action="store_true", help="also 1/10/50 clients per endpoint (no prober)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/service.json")
    args = ap.parse_args()
    placement = (f"server pinned to CPU {sorted(SERVER_CPUS)}, load generator and prober to CPU {sorted(LOAD_CPUS)}"
                 if pinned() else "not pinned (one CPU)")
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}, {platform.machine()}, Python {platform.python_version()}; "
          f"{placement}")
    out: dict = {"machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "platform": platform.platform(),
                             "pinned": pinned()}}
    if pinned():
        os.sched_setaffinity(0, LOAD_CPUS)  # this process, its event loop and the prober it forks
    names = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
    results = {names.get(b.strip(), b.strip()): bench_backend(b.strip(), args.sweep)
               for b in ([] if args.skip_latency else args.backends.split(","))}
    if results:
        print_latency(results)
        if args.sweep:
            print_sweep(results)
        out["latency"] = results
    if not args.skip_speedup:
        if pinned():
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        bench_speedup(out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
