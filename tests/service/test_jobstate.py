"""The job state machine: the drawn transitions, and on both backends with two servers, that
every pair of states moves only where the machine allows, through the store's one guarded
transition and through every public operation."""
from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from sqlalchemy import update

from service.db import JobRow, utcnow
from service.jobstate import TERMINAL, TRANSITIONS, JobStatus, TransitionError, allowed
from service.store import Conflict, Store, migrate

MODEL = {"id": "b" * 64, "ref": "builtin:digits-cnn", "kind": "classifier", "metric": "accuracy", "n_layers": 1,
         "n_weights": 10, "layers": []}
PAIRS = list(itertools.product(JobStatus, JobStatus))


def test_the_drawn_machine():
    assert set(TERMINAL) == {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
    assert all(s.is_terminal() == (s in TERMINAL) for s in JobStatus)
    assert allowed("queued", "running") and allowed(JobStatus.RUNNING, JobStatus.QUEUED)
    assert not allowed("queued", "succeeded") and not allowed("succeeded", "queued")
    assert JobStatus.RUNNING == "running" and f"{JobStatus.FAILED}" == "failed"  # plain strings on the wire
    assert all(t in JobStatus for ts in TRANSITIONS.values() for t in ts)


@pytest.fixture
def servers(db_url):
    """Two servers (two Stores with their own engines) on one database."""
    migrate(db_url)
    a, b = Store(db_url), Store(db_url)
    a.add_model(MODEL)
    yield a, b
    a.engine.dispose()
    b.engine.dispose()


def _job_in(st: Store, status: JobStatus, owner: str = "server-a") -> str:
    """A job put straight into ``status`` (held by ``owner`` and long silent when running)."""
    job, _ = st.create_job(MODEL["id"], {"n": utcnow().isoformat()}, "h", "k" * 64, None)
    with st.session() as s:
        s.execute(update(JobRow).where(JobRow.id == job.id).values(
            status=status, owner=owner if status == JobStatus.RUNNING else None, attempts=1,
            heartbeat_at=utcnow() - timedelta(hours=1)))
    return job.id


def test_every_pair_moves_only_where_the_machine_allows(servers):
    a, b = servers
    for source, target in PAIRS:
        jid = _job_in(a, source)
        if allowed(source, target):
            assert b.transition(jid, source, target), (source, target)
            assert b.get_job(jid).status == target
            assert not a.transition(jid, source, target)  # the other server, same move: lost
        else:
            with pytest.raises(TransitionError, match=f"from {source} to {target}"):
                b.transition(jid, source, target)
            assert a.get_job(jid).status == source
        # a move from a state the job is not in never happens
        for other in JobStatus:
            if other != source and allowed(other, target):
                assert not a.transition(_job_in(a, source), other, target)


OPERATIONS = {
    "claim by a": lambda a, b, j: a.claim("server-a", 100),
    "succeed by a": lambda a, b, j: a.succeed(j, "server-a", [{"p": 1}], {}, None, False),
    "succeed by b": lambda a, b, j: b.succeed(j, "server-b", [{"p": 1}], {}, None, False),
    "fail by a": lambda a, b, j: a.fail(j, "server-a", "boom"),
    "fail by b": lambda a, b, j: b.fail(j, "server-b", "boom"),
    "cancelled by a": lambda a, b, j: a.cancelled(j, "server-a"),
    "cancelled by b": lambda a, b, j: b.cancelled(j, "server-b"),
    "cancel request": lambda a, b, j: b.request_cancel(j),
    "recover by b": lambda a, b, j: b.recover("server-b", lease_seconds=60, max_attempts=3),
    "recover by a": lambda a, b, j: a.recover("server-a", lease_seconds=60, max_attempts=3),
    "release by a": lambda a, b, j: a.release("server-a", max_attempts=3),
    "release by b": lambda a, b, j: b.release("server-b", max_attempts=3),
}
# what another server (b) may never do to a job server a holds
NOT_BY_OTHERS = {"succeed by b", "fail by b", "cancelled by b", "release by b", "recover by a"}


@pytest.mark.parametrize("op", sorted(OPERATIONS))
def test_every_operation_from_every_state_stays_on_the_machine(servers, op):
    a, b = servers
    for source in JobStatus:
        jid = _job_in(a, source)
        try:
            OPERATIONS[op](a, b, jid)
        except Conflict:
            assert op == "cancel request" and source in (JobStatus.SUCCEEDED, JobStatus.FAILED)
        now = a.get_job(jid).status
        assert now == source or now in TRANSITIONS[source], (op, source, now)
        if op in NOT_BY_OTHERS or source.is_terminal():
            assert now == source, (op, source, now)
        with a.session() as s:  # leave no claimable job behind for the next start state
            s.execute(update(JobRow).where(JobRow.status == JobStatus.QUEUED).values(status=JobStatus.CANCELLED))
