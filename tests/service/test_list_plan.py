"""GET /v1/jobs?limit=50 (ORDER BY created_at DESC, id DESC, optionally filtered by status or
model_id) must read the jobs table through an index, never a full scan, on both backends: the
statement the store really sends is captured and EXPLAINed over a few thousand stored jobs."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import event, insert, text

from service.db import JobRow, ModelRow, utcnow
from service.store import Store, migrate

N_JOBS = 3000


def _fill(store: Store) -> list[str]:
    models = [uuid.uuid4().hex * 2 for _ in range(3)]
    now = utcnow()
    with store.engine.begin() as conn:
        conn.execute(insert(ModelRow.__table__), [dict(id=m, ref="builtin:x", kind="classifier", metric="accuracy",
                                                       n_layers=1, n_weights=1, info={}, created_at=now) for m in models])
        conn.execute(insert(JobRow.__table__), [dict(
            id=uuid.uuid4().hex, model_id=models[i % 3], status=("queued", "running", "succeeded")[(i // 7) % 3],
            phase=None, progress=0.0, message="", request={}, request_hash="h", idempotency_key=None,
            sensitivity_key="k", sensitivity_id=None, sensitivity_cached=False, created_at=now - timedelta(seconds=i),
            attempts=0, cancel_requested=False, timings={}, error=None) for i in range(N_JOBS)])
        conn.execute(text("ANALYZE"))
    return models


def _statement(store: Store, **filters) -> tuple[str, object]:
    """The SELECT … FROM jobs that ``list_jobs`` executes, with its parameters."""
    seen = []

    def capture(_conn, _cursor, statement, parameters, _context, _many):
        if "FROM jobs" in statement:
            seen.append((statement, parameters))
    event.listen(store.engine, "before_cursor_execute", capture)
    try:
        store.list_jobs(filters.get("status"), filters.get("model_id"), None, 50)
    finally:
        event.remove(store.engine, "before_cursor_execute", capture)
    return seen[0]


def _plan(store: Store, statement: str, parameters) -> str:
    with store.engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        cur = raw.cursor()
        prefix = "EXPLAIN QUERY PLAN " if store.url.startswith("sqlite") else "EXPLAIN "
        cur.execute(prefix + statement, parameters)
        rows = cur.fetchall()
        return "\n".join(str(r[-1]) for r in rows)


@pytest.mark.parametrize("filters", ["none", "status", "model_id", "both"])
def test_job_list_pages_are_index_scans(db_url, filters):
    migrate(db_url)
    store = Store(db_url)
    try:
        models = _fill(store)
        kw = {"none": {}, "status": {"status": "queued"}, "model_id": {"model_id": models[1]},
              "both": {"status": "queued", "model_id": models[1]}}[filters]
        plan = _plan(store, *_statement(store, **kw))
        index = {"none": "ix_jobs_page", "status": "ix_jobs_status_page", "model_id": "ix_jobs_model_page",
                 "both": "ix_jobs_"}[filters]
        if db_url.startswith("sqlite"):
            assert "USING INDEX" in plan and "SCAN jobs\n" not in plan + "\n", plan
            assert index in plan and "TEMP B-TREE" not in plan, plan  # read in order: no sort
        else:
            assert "Index Scan" in plan and "Seq Scan on jobs" not in plan, plan
            # the planner may page the (created_at, id) index and filter when matches are dense;
            # either way the page is read in index order, never sorted
            assert "ix_jobs_" in plan and "Sort" not in plan, plan
    finally:
        store.engine.dispose()
