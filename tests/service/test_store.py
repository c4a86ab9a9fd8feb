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


def test_two_servers_one_database_release_only_their_own_jobs(db_url):
    """Two servers (two Stores, two owners) on one database: the one that shuts down puts back
    its own running job; the other's job keeps running and its success is recorded."""
    migrate(db_url)
    a, b = Store(db_url), Store(db_url)
    try:
        a.add_model(MODEL)
        ja, jb = _job(a)[0], _job(a)[0]
        assert [j.id for j in a.claim("server-a", 1)] == [ja.id]
        assert [j.id for j in b.claim("server-b", 1)] == [jb.id]
        assert a.release("server-a", max_attempts=3) == [(ja.id, "requeued")]
        assert a.get_job(ja.id).status == "queued" and a.get_job(ja.id).owner is None
        assert b.get_job(jb.id).status == "running" and b.get_job(jb.id).owner == "server-b"
        assert b.succeed(jb.id, "server-b", [{"p": 1}], {"solve": 0.1}, None, False)
        done = b.get_job(jb.id)
        assert done.status == "succeeded" and b.job_with_policies(jb.id)[1]
        # a's stale result for the job it released is refused and writes no policy
        assert not a.succeed(ja.id, "server-a", [{"p": 2}], {}, None, False)
        assert a.get_job(ja.id).status == "queued" and a.job_with_policies(ja.id)[1] == []
        # and a later release by a finds nothing of b's
        assert a.release("server-a", max_attempts=3) == []
    finally:
        a.engine.dispose()
        b.engine.dispose()


def test_succeed_is_a_guarded_transition(store):
    """succeed() wins only on (running, this owner): not for another owner, not after a cancel
    finished the job, not twice."""
    job = _job(store)[0]
    store.claim("me", 1)
    assert not store.succeed(job.id, "someone-else", [{"p": 1}], {}, None, False)
    assert store.succeed(job.id, "me", [{"p": 1}], {"solve": 1.0}, "t1", True)
    assert not store.succeed(job.id, "me", [{"p": 2}], {}, None, False)
    row, pids = store.job_with_policies(job.id)
    assert row.status == "succeeded" and len(pids) == 1 and row.sensitivity_cached and row.timings == {"solve": 1.0}
    assert [e.status for e in store.events(job.id)] == ["queued", "running", "succeeded"]
    other = _job(store)[0]
    store.claim("me", 1)
    assert store.cancelled(other.id, "me", "cancelled")
    assert not store.succeed(other.id, "me", [{"p": 1}], {}, None, False)
    assert store.get_job(other.id).status == "cancelled" and store.job_with_policies(other.id)[1] == []


def test_recover_refuses_a_lease_that_would_take_live_jobs(store):
    with pytest.raises(ValueError, match="positive"):
        store.recover("", lease_seconds=-3600, max_attempts=3)
