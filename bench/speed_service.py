"""Speed of re-solving a stored sensitivity table through the API (POST
/v1/sensitivities/{id}/solve): the server's own time (``server_ms``, also its Server-Timing
header) and the client's round trip, for the first request (cold: the table is read from the
store and prepared, unless this server solved it before — ``cached`` says) and the ones after
(warm: the prepared table comes from the server's cache).

    from bench.speed_service import resolve_timings
    resolve_timings("http://127.0.0.1:8000", None, TABLE_ID, [3.3, 3.8, 4.3])

    python bench/speed_service.py --table TABLE_ID --budgets 3.3,3.8,4.3 [--url …] [--token …]
    python bench/speed_service.py --start      # a local server, a tiny digits job for its table, then the timings

Importing this module runs nothing."""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

TIMING = re.compile(r"solve;dur=(\d+(?:\.\d+)?)")


def _p95(xs: list[float]) -> float:
    """Nearest rank: the smallest value at least 95% of the samples are at or below."""
    s = sorted(xs)
    return s[max(0, math.ceil(0.95 * len(s)) - 1)]


def _summary(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 3), "p95": round(_p95(xs), 3), "min": round(min(xs), 3),
            "max": round(max(xs), 3)} if xs else {}


def _one(http: httpx.Client, table_id: str, metric: str, budget: float) -> dict:
    t = time.perf_counter()
    r = http.post(f"/v1/sensitivities/{table_id}/solve", json={"budgets": {metric: budget}})
    client_ms = (time.perf_counter() - t) * 1e3
    if r.status_code != 200:
        raise RuntimeError(f"solve {metric}={budget:g} on {table_id}: {r.status_code} {r.text[:300]}")
    body = r.json()
    m = TIMING.fullmatch(r.headers.get("server-timing", ""))
    return {"server_ms": float(body["server_ms"]), "header_ms": float(m.group(1)) if m else None,
            "solve_ms": float(body["solve_ms"]), "client_ms": client_ms, "cached": bool(body["cached"])}


def resolve_timings(base_url: str, token: str | None, table_id: str, budgets: list[float], repeats: int = 20,
                    metric: str = "avg_bits") -> dict:
    """Time the solve endpoint: one cold call (the first budget), then ``repeats`` rounds over
    every budget (warm). Returns the cold call's times and the warm calls' median/p95 of
    ``server_ms``, the solver's own ``solve_ms`` and the client round trip (ms)."""
    if not budgets:
        raise ValueError("give at least one budget")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=120) as http:
        cold = _one(http, table_id, metric, budgets[0])
        warm = [_one(http, table_id, metric, b) for _ in range(repeats) for b in budgets]
    return {"table_id": table_id, "metric": metric, "budgets": list(budgets), "repeats": repeats,
            "cold": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in cold.items()},
            "warm": {"n": len(warm), "all_cached": all(w["cached"] for w in warm),
                     "server_ms": _summary([w["server_ms"] for w in warm]),
                     "solve_ms": _summary([w["solve_ms"] for w in warm]),
                     "client_ms": _summary([w["client_ms"] for w in warm])}}


def _started_table(var: Path) -> tuple[object, str]:
    """A local ``bitplan serve`` (SQLite, its own folder) and the table of a tiny digits job."""
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    from service.client import Client
    from service.launcher import ServerProcess, free_port
    env = {**os.environ, "BITPLAN_VAR_DIR": str(var), "BITPLAN_DATABASE_URL": f"sqlite:///{var / 'bitplan.db'}"}
    env.pop("BITPLAN_API_TOKEN", None)
    srv = ServerProcess(free_port(), var / "server.log", env, cwd=root)
    srv.start(timeout=180)
    with Client(srv.url, None, timeout=600) as c:
        model = c.register_model("builtin:digits-cnn")
        job = c.wait(c.submit(model.id, {"avg_bits": 3.3}, formats={"bits": [2, 3, 4, 8], "group_size": [32, 64, 128]},
                              proxy="measured", solver="ilp", refine=False).id, timeout=900)
    return srv, job.sensitivity_id


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=os.environ.get("BITPLAN_URL", "http://127.0.0.1:8000"))
    p.add_argument("--token", default=os.environ.get("BITPLAN_API_TOKEN"))
    p.add_argument("--table", help="a stored table id (a job's sensitivity_id)")
    p.add_argument("--budgets", default="3.3,3.8,4.3", help="avg_bits budgets, comma-separated")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--start", action="store_true", help="start a local server and make a table with a tiny digits job")
    args = p.parse_args(argv)
    budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    if args.start:
        with tempfile.TemporaryDirectory(prefix="bitplan-speed-service-") as var:
            srv, table = _started_table(Path(var))
            try:
                out = resolve_timings(srv.url, None, table, budgets, args.repeats)
            finally:
                srv.stop()
    else:
        if not args.table:
            p.error("--table is required unless --start")
        out = resolve_timings(args.url, args.token, args.table, budgets, args.repeats)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
