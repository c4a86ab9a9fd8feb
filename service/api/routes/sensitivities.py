"""/v1/sensitivities: a stored sensitivity table (bitplan.sensitivity/v1 JSON), and a new budget
solved on it without a job (``POST /v1/sensitivities/{id}/solve``, service/resolve.py). The
tables of one model are listed under /v1/models/{model_id}/sensitivities.

Tables never change once stored, so the solve route keeps the parsed table and its cost model
in a small LRU per app (``app.state.solve_cache``, keyed by table id); its lifespan warms the
solvers' scipy, so that no request pays for that import."""
from __future__ import annotations

import logging
import threading
import time
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.api.common import check_id, json_response, stored
from service.api.deps import StoreDep
from service.api.errors import ApiError, errors
from service.schemas import SolveOut, SolveRequest
from service.store import Store

log = logging.getLogger("bitplan.api")


@asynccontextmanager
async def lifespan(app: FastAPI):
    """After the app's own start-up (the store, Ray, the heap freeze): import and run the table
    solvers once (scipy.optimize, HiGHS: ~0.5 s) so the first solve request does not pay for it,
    then freeze the heap again so that collections keep skipping what start-up loaded."""
    import gc

    from service.resolve import warm
    try:
        await run_in_threadpool(warm)
    except Exception:  # the server still serves; the first solve then pays for the import itself
        log.exception("warming the table solvers failed")
    gc.collect()
    gc.freeze()
    yield


router = APIRouter(lifespan=lifespan)
_cache_lock = threading.Lock()

SERVER_TIMING = {"Server-Timing": {"description": "solve;dur=<ms>: the time the server spent on the request "
                                                  "(the same as server_ms)", "schema": {"type": "string"}}}


@router.get("/sensitivities/{table_id}", tags=["sensitivities"],
            responses={200: {"description": "bitplan.sensitivity/v1 JSON"}, **errors(404)})
def get_table(table_id: str, st: StoreDep):
    row = stored(table_id, "sensitivity table", st.get_table)
    return JSONResponse({**row.data, "id": row.id})


def _cache(app: FastAPI):
    cache = getattr(app.state, "solve_cache", None)
    if cache is None:
        from service.resolve import TableCache
        with _cache_lock:
            cache = getattr(app.state, "solve_cache", None)
            if cache is None:
                cache = app.state.solve_cache = TableCache()
    return cache


def _solve(app: FastAPI, st: Store, table_id: str, body: SolveRequest) -> dict:
    """The blocking part, in the API's thread pool: the table (cached, else read once from the
    store) and the solve."""
    from service.resolve import SolveError, solve_prepared

    def load(tid: str):
        row = st.get_table(tid)
        return None if row is None else (row.data, row.model_id)
    found = _cache(app).get(table_id, load)
    if found is None:
        raise ApiError(404, "not_found", f"no sensitivity table {table_id!r}; a job's table id is its "
                       "sensitivity_id (GET /v1/jobs/{id}) or GET /v1/models/{id}/sensitivities lists them")
    prep, cached = found
    try:
        out = solve_prepared(prep, body.budgets, body.solver, body.ties, body.runtime, body.latency_table)
    except SolveError as e:
        raise ApiError(422, e.code, str(e), {"field": e.field} if e.field else None) from None
    out["cached"] = cached
    return out


@router.post("/sensitivities/{table_id}/solve", response_model=SolveOut, tags=["sensitivities"],
             responses={200: {"description": "the policy the solver finds on the stored table", "headers": SERVER_TIMING},
                        **errors(404, 413, 422)})
async def solve_table(table_id: str, body: SolveRequest, request: Request, st: StoreDep):
    """Solve a new budget on a stored sensitivity table, without a job: the layer → format
    choice, its cost under every metric, the predicted loss increase (``objective``, in the
    table's unit) and the solver's bound and gap. Nothing is stored. Only the solvers of a
    table (not ``joint``, which measures the model)."""
    t0 = time.perf_counter()
    check_id(table_id, "sensitivity table")
    out = await run_in_threadpool(_solve, request.app, st, table_id, body)
    ms = (time.perf_counter() - t0) * 1e3
    out["server_ms"] = round(ms, 3)
    return json_response(out, headers={"Server-Timing": f"solve;dur={ms:.3f}"})
