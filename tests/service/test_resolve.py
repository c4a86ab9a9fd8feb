"""A new budget solved on a stored sensitivity table without a job (POST
/v1/sensitivities/{id}/solve, service/resolve.py).

- The pure part (a table dict + a budget → the solution) against search's own solvers, and the
  prepared-table cache: plain unit tests.
- The route on FastAPI's TestClient with a one-table store (no lifespan, no Ray): errors, the
  Server-Timing header, the cache.
- End to end (integration): a real ``bitplan serve`` on SQLite and PostgreSQL, a table from a
  tiny digits job, the SDK (sync and async), the remote CLI, and the store left unchanged."""
from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from service.resolve import PreparedTable, SolveError, TableCache, solve_prepared, solve_table, table_solvers

# fc layers of a toy model: two attention-like siblings to tie, one odd-sized layer
LAYERS = [{"name": "blk.attn.q_proj", "kind": "linear", "shape": [64, 128], "numel": 8192, "in_features": 128, "macs": 8192},
          {"name": "blk.attn.k_proj", "kind": "linear", "shape": [64, 128], "numel": 8192, "in_features": 128, "macs": 8192},
          {"name": "blk.attn.v_proj", "kind": "linear", "shape": [64, 128], "numel": 8192, "in_features": 128, "macs": 8192},
          {"name": "blk.mlp.fc", "kind": "linear", "shape": [32, 256], "numel": 8192, "in_features": 256, "macs": 8192},
          {"name": "head", "kind": "linear", "shape": [10, 100], "numel": 1000, "in_features": 100, "macs": 1000}]
FORMATS = [{"bits": 2, "group_size": 64, "symmetric": False}, {"bits": 4, "group_size": 64, "symmetric": False},
           {"bits": 8, "group_size": 64, "symmetric": False}]
VALUES = [[5.0, 1.0, 0.01], [0.5, 0.1, 0.001], [4.0, 0.3, 0.002], [3.0, 0.6, 0.01], [9.0, 2.0, 0.05]]
TABLE = {"schema": "bitplan.sensitivity/v1", "proxy": "measured", "params": {}, "calibration": {},
         "model_sha256": "m" * 64, "layers": LAYERS, "formats": FORMATS, "values": VALUES, "stderr": None}


def _local(table: dict, budgets: dict, ties: list[str] = (), solver: str = "ilp"):
    """search's own solve of the same table: what a job's solve phase computes."""
    from search.budgets import CostModel
    from search.layers import find_tie_groups
    from search.problem import Problem
    from search.solvers import get_solver
    from search.table import SensitivityTable
    t = SensitivityTable.from_dict(table)
    costs = CostModel(t.layers, t.formats)
    sol = get_solver(solver).solve(Problem(t.values, costs, budgets, find_tie_groups(t.layers, list(ties))))
    return sol, costs


# ----------------------------------------------------------------------------- the pure part
@pytest.mark.parametrize("budget", [2.6, 3.5, 4.4, 8.3])
def test_solve_table_matches_search_ilp(budget):
    out = solve_table(TABLE, {"avg_bits": budget})
    sol, costs = _local(TABLE, {"avg_bits": budget})
    assert out["objective"] == pytest.approx(sol.objective, rel=1e-9, abs=1e-12)
    assert out["cost"]["avg_bits"] <= budget * (1 + 1e-9)
    assert list(out["layers"]) == [l["name"] for l in LAYERS]  # model order
    labels = ["w2g64a", "w4g64a", "w8g64a"]
    choice = np.array([labels.index(out["layers"][l["name"]]) for l in LAYERS])
    assert out["cost"] == pytest.approx(costs.cost(choice))
    assert out["objective"] == pytest.approx(float(np.array(VALUES)[np.arange(5), choice].sum()))
    assert out["solver"] == "ilp" and out["gap"] == pytest.approx(0, abs=1e-6) and out["lower_bound"] is not None
    assert set(out["cost"]) == {"avg_bits", "size_bytes", "bops"} and out["tied"] == []


@pytest.mark.parametrize("solver", ["lp", "convex", "pareto"])
def test_every_table_solver_gives_a_policy_within_budget(solver):
    out = solve_table(TABLE, {"avg_bits": 4.0}, solver)
    assert out["solver"] == solver and out["cost"]["avg_bits"] <= 4.0 * (1 + 1e-9)
    assert out["objective"] == pytest.approx(_local(TABLE, {"avg_bits": 4.0}, solver=solver)[0].objective)


def test_ties_and_runtime_tie_the_siblings():
    out = solve_table(TABLE, {"avg_bits": 4.0}, ties=["qkv"])
    assert out["tied"] == [["blk.attn.q_proj", "blk.attn.k_proj", "blk.attn.v_proj"]]
    assert len({out["layers"][n] for n in out["tied"][0]}) == 1
    assert out["objective"] == pytest.approx(_local(TABLE, {"avg_bits": 4.0}, ["qkv"])[0].objective)
    assert solve_table(TABLE, {"avg_bits": 4.0}, runtime="vllm")["tied"] == out["tied"]
    free = solve_table(TABLE, {"avg_bits": 4.0})
    assert free["objective"] <= out["objective"] + 1e-12  # a tie can only cost
    with pytest.raises(SolveError, match="unknown tie preset 'qkvv'.*qkv"):
        solve_table(TABLE, {"avg_bits": 4.0}, ties=["qkvv"])
    with pytest.raises(SolveError, match="runtime: unknown runtime 'tgi'.*vllm"):
        solve_table(TABLE, {"avg_bits": 4.0}, runtime="tgi")


def test_several_limits_all_hold():
    out = solve_table(TABLE, {"avg_bits": 6.0, "bops": 8192 * 4 * 16 * 4 + 1000 * 8 * 16})
    assert out["cost"]["avg_bits"] <= 6.0 and out["cost"]["bops"] <= 8192 * 4 * 16 * 4 + 1000 * 8 * 16
    assert out["objective"] == pytest.approx(_local(TABLE, out["budgets"])[0].objective)


def test_bad_requests_say_what_to_change():
    with pytest.raises(SolveError, match=r"below the cheapest policy with these formats \(avg_bits=2\.28\d*\); "
                                         r"feasible range is \[2\.28\d*, 16\]") as e:
        solve_table(TABLE, {"avg_bits": 1.5})
    assert e.value.code == "infeasible_budget"
    with pytest.raises(SolveError, match="above the float model") as e:
        solve_table(TABLE, {"avg_bits": 17})
    with pytest.raises(SolveError, match="unknown budget metric 'accuracy'; use one of avg_bits, size_bytes, bops, "
                                         "latency_ms") as e:
        solve_table(TABLE, {"accuracy": 3.0})
    assert e.value.code == "invalid_request" and e.value.field == "budgets"
    with pytest.raises(SolveError, match="no budget given"):
        solve_table(TABLE, {})
    with pytest.raises(SolveError, match="must be a positive number"):
        solve_table(TABLE, {"avg_bits": -1.0})
    valid = ", ".join(table_solvers())
    assert valid == "convex, ilp, lp, pareto"
    with pytest.raises(SolveError, match=f"'joint' measures policies on the model.*{valid}") as e:
        solve_table(TABLE, {"avg_bits": 4.0}, "joint")
    assert e.value.field == "solver"
    with pytest.raises(SolveError, match=f"unknown solver 'simplex'.*{valid}"):
        solve_table(TABLE, {"avg_bits": 4.0}, "simplex")


def test_latency_budgets_need_a_latency_table_and_can_conflict():
    with pytest.raises(SolveError, match="latency_ms needs latency_table"):
        solve_table(TABLE, {"latency_ms": 3.0})
    slow_low_bits = {l["name"]: {"w2g64a": 2.0, "w4g64a": 1.5, "w8g64a": 1.0} for l in LAYERS}
    out = solve_table(TABLE, {"latency_ms": 5.5}, latency_table=slow_low_bits)
    assert out["cost"]["latency_ms"] <= 5.5 and "latency_ms" in out["cost"]
    with pytest.raises(SolveError, match="no entry for layer 'head'") as e:
        solve_table(TABLE, {"latency_ms": 5.5}, latency_table={k: v for k, v in slow_low_bits.items() if k != "head"})
    assert e.value.field == "latency_table"
    with pytest.raises(SolveError, match="a latency must be a number"):
        solve_table(TABLE, {"latency_ms": 5.5}, latency_table={**slow_low_bits, "head": {"w2g64a": float("nan")}})
    # each limit alone is feasible, both at once are not: the cheapest bits are the slowest
    with pytest.raises(SolveError, match="no policy meets every budget at once") as e:
        solve_table(TABLE, {"avg_bits": 2.4, "latency_ms": 5.2}, latency_table=slow_low_bits)
    assert e.value.code == "infeasible_budget"


def test_a_prepared_table_is_reused_unchanged():
    prep = PreparedTable.from_dict(TABLE, "t1", "model-1")
    before = {m: a.copy() for m, a in prep.costs.matrices.items()}
    a = solve_prepared(prep, {"avg_bits": 3.5})
    solve_prepared(prep, {"latency_ms": 5.5}, latency_table={l["name"]: {"w2g64a": 2, "w4g64a": 1, "w8g64a": 1}
                                                             for l in LAYERS})
    solve_prepared(prep, {"avg_bits": 4.0}, ties=["qkv"])
    assert a == {**solve_prepared(prep, {"avg_bits": 3.5}), "solve_ms": a["solve_ms"]}
    assert a["table_id"] == "t1" and a["model_id"] == "model-1"
    assert set(prep.costs.matrices) == set(before) and all(np.array_equal(prep.costs.matrices[m], before[m])
                                                           for m in before)


def test_one_prepared_table_serves_concurrent_requests():
    """The API's threads share a cached table: answers match the serial ones."""
    from concurrent.futures import ThreadPoolExecutor
    prep = PreparedTable.from_dict(TABLE, "t")
    jobs = [({"avg_bits": b}, t) for b in (2.5, 3.0, 3.5, 4.0, 6.0) for t in ((), ("qkv",))] * 3
    serial = [solve_prepared(PreparedTable.from_dict(TABLE, "t"), b, ties=t)["objective"] for b, t in jobs]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda j: solve_prepared(prep, j[0], ties=j[1])["objective"], jobs))
    assert parallel == pytest.approx(serial)


def test_table_cache_is_an_lru_bounded_by_tables_and_cells():
    loads = []

    def load(tid):
        loads.append(tid)
        return None if tid == "missing" else (TABLE, "model")
    cache = TableCache(max_tables=2, max_cells=40)  # 15 cells a table
    assert cache.get("missing", load) is None and len(cache) == 0
    p1, hit = cache.get("a", load)
    assert not hit and p1.table_id == "a"
    assert cache.get("a", load) == (p1, True)
    cache.get("b", load)
    cache.get("a", load)         # a is now the most recently used
    cache.get("c", load)         # evicts b
    assert len(cache) == 2 and cache.cells == 30
    assert cache.get("a", load)[1] and not cache.get("b", load)[1]
    assert loads == ["missing", "a", "b", "c", "b"]
    small = TableCache(max_tables=4, max_cells=10)  # a table over the cell bound is solved, not kept
    assert small.get("a", load)[1] is False and len(small) == 0 and small.cells == 0


def test_warm_imports_the_solvers():
    from service.resolve import warm
    assert warm() >= 0 and "scipy.optimize" in sys.modules


# ----------------------------------------------------------------------------- the route (TestClient)
TOKEN = "unit-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TABLE_ID = "f" * 32


class OneTableStore:
    def __init__(self):
        self.reads = 0

    def get_table(self, table_id):
        self.reads += 1
        return SimpleNamespace(id=TABLE_ID, model_id="m" * 64, data=TABLE) if table_id == TABLE_ID else None


@pytest.fixture
def client(tmp_path: Path):
    from fastapi.testclient import TestClient

    from service.api import create_app
    from service.config import Settings
    app = create_app(Settings(var_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'x.db'}", api_token=TOKEN))
    app.state.store = OneTableStore()
    return TestClient(app, headers=AUTH)


def _timing(r) -> float:
    m = re.fullmatch(r"solve;dur=(\d+(?:\.\d+)?)", r.headers["server-timing"])
    assert m, r.headers["server-timing"]
    return float(m.group(1))


def test_route_solves_and_caches_the_table(client):
    r = client.post(f"/v1/sensitivities/{TABLE_ID}/solve", json={"budgets": {"avg_bits": 3.5}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["table_id"] == TABLE_ID and body["model_id"] == "m" * 64 and body["cached"] is False
    assert body["objective"] == pytest.approx(_local(TABLE, {"avg_bits": 3.5})[0].objective)
    assert body["server_ms"] > 0 and _timing(r) == pytest.approx(body["server_ms"], abs=1e-3)
    again = client.post(f"/v1/sensitivities/{TABLE_ID}/solve", json={"budgets": {"avg_bits": 4.5}, "solver": "lp"})
    assert again.status_code == 200 and again.json()["cached"] is True and again.json()["solver"] == "lp"
    assert client.app.state.store.reads == 1  # tables never change: read once, then cached


@pytest.mark.parametrize("path,body,status,code,words", [
    ("nope", {"budgets": {"avg_bits": 3.5}}, 404, "not_found", "no sensitivity table 'nope'"),
    ("bad%20id", {"budgets": {"avg_bits": 3.5}}, 404, "not_found", "no sensitivity table"),
    (TABLE_ID, {"budgets": {"avg_bits": 1.0}}, 422, "infeasible_budget", "below the cheapest policy"),
    (TABLE_ID, {"budgets": {"accuracy": 3.0}}, 422, "invalid_request", "unknown budget metric 'accuracy'"),
    (TABLE_ID, {"budgets": {"avg_bits": 3.5}, "solver": "joint"}, 422, "invalid_request", "convex, ilp, lp, pareto"),
    (TABLE_ID, {"budgets": {"avg_bits": 3.5}, "solver": "nope"}, 422, "invalid_request", "unknown solver 'nope'"),
    (TABLE_ID, {"budgets": {}}, 422, "invalid_request", "budgets"),
    (TABLE_ID, {"budgets": {"avg_bits": -2}}, 422, "invalid_request", "budgets.avg_bits"),
    (TABLE_ID, {"budget": {"avg_bits": 3}}, 422, "invalid_request", "budget"),
    (TABLE_ID, {"budgets": {"latency_ms": 3}}, 422, "invalid_request", "latency_table"),
])
def test_route_errors_are_4xx_with_a_message(client, path, body, status, code, words):
    r = client.post(f"/v1/sensitivities/{path}/solve", json=body)
    assert r.status_code == status and r.json()["code"] == code and words in r.json()["message"], r.text


def test_route_is_in_the_openapi_document_with_its_models(client):
    doc = client.get("/openapi.json").json()
    op = doc["paths"]["/v1/sensitivities/{table_id}/solve"]["post"]
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/SolveOut")
    assert "Server-Timing" in op["responses"]["200"]["headers"]
    assert {"401", "404", "413", "422"} <= set(op["responses"])
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/SolveRequest")


# ----------------------------------------------------------------------------- end to end
TINY = dict(formats={"bits": [2, 4, 8], "group_size": 64}, proxy="measured", solver="ilp", refine=False,
            calibration={"n_samples": 16}, evaluation={"n_samples": 16})


def _counts(database_url: str) -> dict[str, int]:
    from sqlalchemy import create_engine, text
    engine = create_engine(database_url)
    try:
        with engine.connect() as c:
            return {t: c.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar_one()
                    for t in ("policies", "sensitivity_tables", "jobs", "job_events", "models")}
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def table_id(server, digits_id) -> str:
    with server.client() as c:
        job = c.wait(c.submit(digits_id, {"avg_bits": 3.3}, **TINY).id, timeout=600, poll_interval=0.2)
        assert job.status == "succeeded" and job.sensitivity_id
        return job.sensitivity_id


@pytest.mark.integration
def test_solve_a_stored_table_end_to_end(server, table_id):
    headers = {"Authorization": f"Bearer {server.token}"}
    before = _counts(server.database_url)
    with server.client() as c:
        table = c.sensitivity(table_id)
        for budget in (2.7, 3.8, 5.0):
            r = httpx.post(f"{server.url}/v1/sensitivities/{table_id}/solve", json={"budgets": {"avg_bits": budget}},
                           headers=headers, timeout=60)
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["cost"]["avg_bits"] <= budget + 1e-9 and out["table_id"] == table_id
            assert out["objective"] == pytest.approx(_local(table, {"avg_bits": budget})[0].objective, rel=1e-9, abs=1e-12)
            assert len(out["layers"]) == len(table["layers"]) == 6
            assert out["server_ms"] > 0 and _timing(r) == pytest.approx(out["server_ms"], abs=1e-3)
        assert out["cached"] is True
        sdk = c.solve_table(table_id, {"avg_bits": 3.8}, "lp")
        assert sdk.solver == "lp" and sdk.cost["avg_bits"] <= 3.8 + 1e-9 and sdk.server_ms > 0

        async def via_async():
            from service.client import AsyncClient
            async with AsyncClient(server.url, server.token) as ac:
                return await ac.solve_table(table_id, {"avg_bits": 3.8}), await ac.sensitivity(table_id)
        solved, same = asyncio.run(via_async())
        assert solved.objective == pytest.approx(_local(table, {"avg_bits": 3.8})[0].objective) and same == table

        from service.client import InvalidRequest, NotFound
        with pytest.raises(NotFound, match="no sensitivity table"):
            c.solve_table("0" * 32, {"avg_bits": 3.8})
        with pytest.raises(InvalidRequest, match=r"below the cheapest policy .*\(avg_bits=2\.\d+\)") as e:
            c.solve_table(table_id, {"avg_bits": 1.0})
        assert e.value.status == 422 and e.value.code == "infeasible_budget"
        with pytest.raises(InvalidRequest, match="unknown budget metric"):
            c.solve_table(table_id, {"flops": 3.0})
        with pytest.raises(InvalidRequest, match="convex, ilp, lp, pareto"):
            c.solve_table(table_id, {"avg_bits": 3.8}, "joint")
    r = httpx.post(f"{server.url}/v1/sensitivities/{table_id}/solve", json={"budgets": {"avg_bits": 3.8}}, timeout=60)
    assert r.status_code == 401  # the token guards it like every /v1 route
    assert _counts(server.database_url) == before  # nothing stored: no job, table, policy or event


@pytest.mark.integration
def test_remote_cli_solve(server, table_id, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "service.cli", "solve", "--url", server.url, "--token",
                               server.token, *args], capture_output=True, text=True, timeout=300)
    out = tmp_path / "solved.json"
    r = cli(table_id, "--budget", "avg_bits=3.8", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"table {table_id}: ilp objective") and "avg_bits" in r.stdout
    saved = json.loads(out.read_text())
    assert saved["cost"]["avg_bits"] <= 3.8 + 1e-9 and all(name in r.stdout for name in saved["layers"])
    for args, words in ((["--budget", "avg_bits=1"], "below the cheapest policy"),
                        (["--budget", "bits=3"], "not METRIC=VALUE"),
                        (["--budget", "avg_bits=3.8", "--solver", "joint"], "convex, ilp, lp, pareto")):
        bad = cli(table_id, *args)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and words in bad.stderr, bad.stderr
    missing = cli("0" * 32, "--budget", "avg_bits=3.8")
    assert missing.returncode == 2 and "no sensitivity table" in missing.stderr
