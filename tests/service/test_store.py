"""The store on both backends (SQLite file and a real PostgreSQL): migrations, idempotency,
claiming, leases and recovery, cancellation, cursor pagination, table reuse."""
from __future__ import annotations

import threading
import time

import pytest

from service.store import BadCursor, Conflict, Store, migrate

MODEL = {"id": "a" * 64, "ref": "builtin:digits-cnn", "kind": "classifier", "metric": "accuracy", "n_layers": 1,
         "n_weights": 10, "layers": []}


@pytest.fixture
def store(db_url):
    migrate(db_url)
    migrate(db_url)  # idempotent: a second server start changes nothing
    st = Store(db_url)
    st.add_model(MODEL)
    yield st
    st.engine.dispose()


def _job(st, key=None, body=None):
    body = body or {"model_id": MODEL["id"], "budgets": {"avg_bits": 3.3}}
    return st.create_job(MODEL["id"], body, str(hash(str(body))), "k" * 64, key)


def test_same_model_twice_is_one_record(store):
    assert store.add_model(MODEL).id == MODEL["id"]
    assert store.get_model(MODEL["id"]).ref == "builtin:digits-cnn"


def test_idempotency_key_replays_and_conflicts(store):
    a, created = _job(store, "key-1")
    b, created2 = _job(store, "key-1")
    assert created and not created2 and a.id == b.id
    with pytest.raises(Conflict, match="different request body"):
        _job(store, "key-1", {"model_id": MODEL["id"], "budgets": {"avg_bits": 4.0}})
    c, _ = _job(store, None)
    d, _ = _job(store, None)
    assert c.id != d.id


def test_concurrent_same_key_lands_once(store):
    ids, errors = [], []

    def go():
        try:
            ids.append(_job(store, "same")[0].id)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=go) for _ in range(16)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and len(set(ids)) == 1


def test_claim_is_exclusive_and_oldest_first(store):
    jobs = [_job(store)[0] for _ in range(3)]
    got_a = store.claim("owner-a", 2)
    got_b = store.claim("owner-b", 5)
    assert [j.id for j in got_a] == [jobs[0].id, jobs[1].id]
    assert [j.id for j in got_b] == [jobs[2].id]
    assert all(j.status == "running" and j.attempts == 1 for j in got_a + got_b)
    assert store.claim("owner-c", 5) == []


def test_recover_requeues_then_gives_up(store):
    job = _job(store)[0]
    store.claim("dead", 1)
    assert store.recover("me", lease_seconds=60, max_attempts=2) == []  # heartbeat is fresh
    time.sleep(0.05)
    assert store.recover("me", lease_seconds=0.01, max_attempts=2) == [(job.id, "requeued")]
    assert store.get_job(job.id).status == "queued"
    store.claim("dead-again", 1)
    time.sleep(0.05)
    assert store.recover("me", lease_seconds=0.01, max_attempts=2) == [(job.id, "failed")]
    j = store.get_job(job.id)
    assert j.status == "failed" and "gave up after 2 attempts" in j.error
    assert [e.status for e in store.events(job.id)] == ["queued", "running", "queued", "running", "failed"]


def test_cancel_transitions(store):
    queued = _job(store)[0]
    assert store.request_cancel(queued.id).status == "cancelled"
    running = _job(store)[0]
    store.claim("me", 1)
    j = store.request_cancel(running.id)
    assert j.status == "running" and j.cancel_requested
    assert store.cancel_requested("me") == [running.id]
    assert store.cancelled(running.id, "me")
    assert store.get_job(running.id).status == "cancelled"
    done = _job(store)[0]
    store.claim("me", 1)
    assert store.succeed(done.id, "me", [{"schema": "bitplan.policy/v1"}], {"solve": 0.1}, None, False)
    with pytest.raises(Conflict, match="already succeeded"):
        store.request_cancel(done.id)
    assert store.request_cancel("nope") is None


def test_only_the_owner_finishes_a_job(store):
    job = _job(store)[0]
    store.claim("a", 1)
    assert not store.succeed(job.id, "b", [], {}, None, False)
    assert not store.fail(job.id, "b", "x")
    assert store.fail(job.id, "a", "boom")
    assert not store.succeed(job.id, "a", [], {}, None, False)  # already ended
    assert store.get_job(job.id).error == "boom"


def test_cursor_pagination_visits_every_job_once(store):
    made = {_job(store)[0].id for _ in range(7)}
    seen, cursor = [], None
    while True:
        rows, cursor = store.list_jobs(limit=3, cursor=cursor)
        seen += [r.id for r in rows]
        if cursor is None:
            break
    assert set(seen) == made and len(seen) == len(made)
    assert store.list_jobs(status="succeeded")[0] == []
    with pytest.raises(BadCursor):
        store.list_jobs(cursor="garbage")


def test_tables_are_stored_once_per_key(store):
    a = store.put_table("t" * 64, MODEL["id"], {"proxy": "measured", "values": [[0.0]]})
    b = store.put_table("t" * 64, MODEL["id"], {"proxy": "measured", "values": [[1.0]]})
    assert a == b and store.get_table(a).data["values"] == [[0.0]]
    assert store.table_by_key("t" * 64).id == a
