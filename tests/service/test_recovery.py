"""Nothing is lost: a server killed mid-job and started again finishes the job; a Ray worker
node that dies mid-job does not leave the job stuck (Ray retries it on the other node)."""
from __future__ import annotations

import os
import time

import pytest

from tests.service.conftest import Server

pytestmark = pytest.mark.integration

TINY = dict(formats={"bits": [2, 4, 8], "group_size": 64}, proxy="measured", solver="ilp", refine=False,
            calibration={"n_samples": 8, "seq_len": 32}, evaluation={"n_samples": 8})
# 432 measured cells on 64 samples of 128 tokens: many minutes on 2 cores, far longer than a
# second server takes to start, claim a job and stop (the test cancels it when done with it)
SLOW = dict(formats={"bits": [2, 3, 4, 8], "group_size": [32, 64, 128]}, proxy="measured", solver="ilp",
            refine=False, calibration={"n_samples": 64, "seq_len": 128}, evaluation={"n_samples": 8})


def _wait_phase(c, job_id: str, phases: tuple[str, ...], timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        j = c.get(job_id)
        if j.phase in phases or j.status in ("succeeded", "failed", "cancelled"):
            return j
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached {phases}: {c.get(job_id)}")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_killed_server_restarts_and_finishes_the_job(tmp_path, backend, request):
    url = f"sqlite:///{tmp_path / 'bitplan.db'}" if backend == "sqlite" else request.getfixturevalue("db_url_pg")
    env = {"BITPLAN_LEASE_SECONDS": "2"}
    first = Server(tmp_path / "a", url, **env).start()
    try:
        with first.client() as c:
            model = c.register_model("builtin:minilm-l6")
            job = c.submit(model.id, {"avg_bits": 3.4}, **TINY)
            j = _wait_phase(c, job.id, ("sensitivity",))
            assert j.status == "running"
    finally:
        first.kill()  # SIGKILL: no shutdown hook runs, the job row still says running
    second = Server(tmp_path / "b", url, **env).start()
    try:
        with second.client() as c:
            final = c.wait(job.id, timeout=400, poll_interval=0.5)
            assert final.status == "succeeded" and final.attempts == 2
            assert any("re-queued" in e.message for e in c.events(job.id))
            assert c.policy(final.policy_ids[0])["cost"]["avg_bits"] <= 3.4 + 1e-9
    finally:
        second.stop()


@pytest.fixture
def db_url_pg(pg_database):
    return pg_database


# a sensitivity phase of ~10 s per chunk on 2 cores: long enough to lose a node in its middle
MID = dict(formats={"bits": [2, 3, 4, 8], "group_size": 64}, proxy="measured", solver="ilp", refine=False,
           calibration={"n_samples": 16, "seq_len": 64}, evaluation={"n_samples": 8})


def _busy_nodes(nodes, c, job_id: str, timeout: float = 300) -> tuple:
    """(the node running the job task, the node running its other sensitivity chunk), read
    from the nodes' ledgers of running bitplan tasks (workers.ray_jobs.NodeLedger) once both run."""
    from workers.ray_jobs import ledger_folder

    def names(node) -> list[str]:
        try:
            return os.listdir(ledger_folder(node.node_id))
        except OSError:
            return []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = [n for n in nodes if any(x.startswith("job-") for x in names(n))]
        chunk = [n for n in nodes if n not in job and any(x.startswith("chunk-") for x in names(n))]
        if job and chunk:
            return job[0], chunk[0]
        time.sleep(0.2)
    raise AssertionError(f"no job task and chunk running on two nodes: {[names(n) for n in nodes]}; "
                         f"{c.get(job_id)}; {[e.message for e in c.events(job_id)]}")


@pytest.mark.parametrize("dies", ["chunk", "job"])
def test_worker_node_dies_mid_job(tmp_path, dies):
    """Two worker nodes (``ray.cluster_utils.Cluster``); the server joins with RAY_ADDRESS. While
    the sensitivity chunks run, the node of the other chunk is removed ("chunk": Ray runs that
    chunk again on the job task's node, which still holds the context it shipped), or the job
    task's own node ("job": the owner of the shipped context and of the chunk goes; Ray runs
    the job task again on the other node). Either way the job ends, succeeded or failed with a
    reason — never stuck on an object or task whose owner or node is gone."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    srv = Server(tmp_path / "var", f"sqlite:///{tmp_path / 'bitplan.db'}", RAY_ADDRESS=cluster.address,
                 BITPLAN_SENSITIVITY_CHUNKS="2")
    try:
        srv.start()
        with srv.client() as c:
            model = c.register_model("builtin:minilm-l6")
            job = c.submit(model.id, {"avg_bits": 3.4}, **MID)
            job_node, chunk_node = _busy_nodes(nodes, c, job.id)
            assert _wait_phase(c, job.id, ("sensitivity",)).status == "running"
            time.sleep(1.0)
            cluster.remove_node(chunk_node if dies == "chunk" else job_node)
            final = c.wait(job.id, timeout=480, poll_interval=0.5, raise_on_failure=False)
            assert final.status in ("succeeded", "failed")
            if final.status == "failed":
                assert final.error and "Error" in final.error
            else:
                assert c.policy(final.policy_ids[0])["cost"]["avg_bits"] <= 3.4 + 1e-9
    finally:
        srv.stop()
        cluster.shutdown()


def test_server_without_ray_address_starts_its_own_ray_beside_a_running_cluster(tmp_path):
    """A Ray instance already running on the machine (a leftover ``ray start``, another
    process's cluster) must not capture a server that was given no RAY_ADDRESS: Ray's default
    address joins any local instance and then refuses num_cpus, so every server failed to start
    (seen in CI after a test left a cluster behind)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0})
    srv = Server(tmp_path / "var", f"sqlite:///{tmp_path / 'bitplan.db'}")
    try:
        srv.start()  # returns once /readyz answers 200: Ray is up, the server's own
        with srv.client() as c:
            assert c.register_model("builtin:minilm-l6").id
    finally:
        srv.stop()
        cluster.shutdown()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_stopping_one_server_leaves_the_other_servers_jobs_alone(tmp_path, backend, request):
    """Two live servers on one database, each running a job. Stopping B gracefully re-queues
    B's job only: A's job keeps running on its first attempt (the old shutdown re-queued every
    running job in the database, so A's later result was thrown away). A's long job is then
    cancelled and A runs B's released job to the end."""
    url = f"sqlite:///{tmp_path / 'bitplan.db'}" if backend == "sqlite" else request.getfixturevalue("db_url_pg")
    a = Server(tmp_path / "a", url, BITPLAN_MAX_RUNNING="1").start()
    b = None
    try:
        with a.client() as c:
            model = c.register_model("builtin:minilm-l6")
            first = c.submit(model.id, {"avg_bits": 3.4}, **SLOW)  # many minutes: it outlives B
            assert _wait_phase(c, first.id, ("sensitivity",)).status == "running"  # A has it (B is not up)
            b = Server(tmp_path / "b", url, BITPLAN_MAX_RUNNING="1").start()
            second = c.submit(model.id, {"avg_bits": 3.6}, seed=1, **TINY)  # A is full: B claims it
            assert _wait_phase(c, second.id, ("load", "calibrate", "sensitivity")).status == "running"
            b.stop()
            b = None
            mid = c.get(first.id)
            assert mid.status == "running" and mid.attempts == 1 and mid.phase == "sensitivity"
            assert not any("re-queued" in e.message for e in c.events(first.id))
            events = [e.message for e in c.events(second.id)]
            assert any("re-queued" in m and "shut down" in m for m in events), events
            assert c.get(second.id).status == "queued"
            c.cancel(first.id)
            assert c.wait(first.id, timeout=120, poll_interval=0.5, raise_on_failure=False).status == "cancelled"
            again = c.wait(second.id, timeout=400, poll_interval=0.5)
            assert again.status == "succeeded" and again.attempts == 2 and again.policy_ids
    finally:
        if b is not None:
            b.stop()
        a.stop()
