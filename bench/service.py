"""Service bench: request latency (p50/p99) of GET /v1/jobs/{id} and GET /v1/jobs at 1, 10 and
50 concurrent clients on SQLite and PostgreSQL, submissions per second, and the speed-up of the
sensitivity phase with 1 vs 2 Ray worker processes. Starts real servers on 127.0.0.1.

    python bench/service.py [--backends sqlite,postgresql] [--skip-speedup]

The latency servers run with BITPLAN_MAX_RUNNING=0 so queued jobs stay queued and no job work
competes with the requests being timed."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.launcher import ServerProcess, free_port  # noqa: E402

PG_ADMIN = os.environ.get("BITPLAN_TEST_PG", "postgresql://127.0.0.1:5432/test")


class Server(ServerProcess):
    """``bitplan serve`` on a free port with its own var folder and database, as a context."""

    def __init__(self, var: Path, url: str, **env):
        full = {**os.environ, "BITPLAN_VAR_DIR": str(var), "BITPLAN_DATABASE_URL": url, **env}
        full.pop("BITPLAN_API_TOKEN", None)
        super().__init__(free_port(), var / "server.log", full, cwd=ROOT)

    def __enter__(self):
        return self.start(timeout=180)

    def __exit__(self, *exc):
        self.stop()


async def latency(url: str, path_of, clients: int, requests_per_client: int) -> list[float]:
    """Closed-loop clients, one keep-alive HTTP/1.1 connection each. A minimal raw client: a
    general-purpose async HTTP client spends more CPU per request than the server does, and on a
    2-core machine that CPU comes out of the server's share."""
    host, port = url.split("//")[1].split(":")
    times: list[float] = []

    async def one(i: int):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for k in range(requests_per_client):
                t = time.perf_counter()
                writer.write(f"GET {path_of(i, k)} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                await reader.readexactly(length)
                times.append(time.perf_counter() - t)
                if status != 200:
                    raise RuntimeError(f"HTTP {status}")
        finally:
            writer.close()
    await asyncio.gather(*(one(i) for i in range(clients)))
    return times


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


def bench_latency(backend: str, out: dict) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f"bitplan-bench-{backend}-"))
    db_name = None
    if backend == "sqlite":
        url = f"sqlite:///{tmp / 'bitplan.db'}"
    else:
        import psycopg
        db_name = f"bitplan_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db_name}"')
        url = f"{PG_ADMIN.rsplit('/', 1)[0]}/{db_name}"
    try:
        with Server(tmp, url, BITPLAN_MAX_RUNNING="0") as srv:
            model = httpx.post(f"{srv.url}/v1/models", json={"ref": "builtin:digits-cnn"}, timeout=300).json()["id"]
            rate = asyncio.run(submissions(srv.url, model, 200, 10))
            ids = [j["id"] for j in httpx.get(f"{srv.url}/v1/jobs", params={"limit": 200}).json()["items"]]
            print(f"\n### {backend}: {rate:.1f} submissions/s (200 jobs, 10 concurrent clients)")
            print("| endpoint | clients | requests | p50 ms | p99 ms |")
            print("|---|---|---|---|---|")
            rows = []
            for name, path_of in (("GET /v1/jobs/{id}", lambda i, k: f"/v1/jobs/{ids[(i * 7 + k) % len(ids)]}"),
                                  ("GET /v1/jobs?limit=50", lambda i, k: "/v1/jobs?limit=50")):
                for clients in (1, 10, 50):
                    per = max(20, 1000 // clients)
                    asyncio.run(latency(srv.url, path_of, clients, 5))  # warm-up
                    t = np.array(asyncio.run(latency(srv.url, path_of, clients, per))) * 1000
                    p50, p99 = np.percentile(t, 50), np.percentile(t, 99)
                    print(f"| {name} | {clients} | {len(t)} | {p50:.1f} | {p99:.1f} |")
                    rows.append({"endpoint": name, "clients": clients, "requests": int(len(t)),
                                 "p50_ms": float(p50), "p99_ms": float(p99)})
            out[backend] = {"submissions_per_s": rate, "latency": rows}
    finally:
        if db_name:
            import psycopg
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


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
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/service.json")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}  {os.cpu_count()} cpus, Python {platform.python_version()}")
    out: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    for b in [] if args.skip_latency else args.backends.split(","):
        bench_latency(b.strip(), out)
    if not args.skip_speedup:
        bench_speedup(out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
