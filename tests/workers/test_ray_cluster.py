"""The job task on real Ray: its torch threads on a local 2-CPU Ray, and a sensitivity table
measured on a two-node cluster (``ray.cluster_utils.Cluster``) that equals the one computed in
one process (chunking, cost balancing and the context shipped through the object store change
nothing in the numbers)."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from search.spec import SearchSpec

pytestmark = pytest.mark.integration


def _spec(**kw) -> dict:
    return SearchSpec(**{"model": "builtin:minilm-l6", "budgets": {"avg_bits": 3.4}, "bits": [2, 4, 8],
                         "group_size": 64, "proxy": "measured", "solver": "ilp", "refine": False, "n_calib": 8,
                         "seq_len": 32, "n_eval": 8, "device": "cpu", "compute_dtype": "float32", **kw}).model_dump()


def test_a_lone_job_task_runs_torch_on_every_cpu_of_its_node():
    """Ray grants the job task one CPU; alone on a 2-CPU node it runs torch on two threads (and
    says so in its progress), and measures the whole sensitivity table itself on them: a second
    chunk on the same node would only split its CPUs between two processes."""
    import ray
    from ray.util.queue import Queue

    from workers.messages import Done, Progress
    from workers.ray_jobs import run_job

    spec = SearchSpec(model="builtin:digits-cnn", budgets={"avg_bits": 4.3}, proxy="measured", solver="ilp",
                      refine=False, n_calib=16).model_dump()
    if ray.is_initialized():  # a test before this one in the same process left its Ray up
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        queue = Queue()
        out = ray.get(run_job.remote([spec], {}, None, 2, queue))
        said = [m.message for m in queue.get_nowait_batch(queue.qsize()) if isinstance(m, Progress)]
    finally:
        ray.shutdown()
    assert isinstance(out, Done) and "chunks" not in out.table["timing"]
    threads = [m for m in said if "torch threads for the job task" in m]
    assert threads and threads[0].startswith("2 torch threads") and "node: 2 CPUs, 1 bitplan job," in threads[0], said


@pytest.fixture(scope="module")
def two_nodes():
    """A head without CPUs and two 1-CPU worker nodes, this process connected as the driver."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address=cluster.address, logging_level=logging.WARNING)
    try:
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_two_node_jobs_table_equals_the_in_process_table(two_nodes):
    import ray
    from ray.util.queue import Queue

    from proxies.base import ProxyContext
    from search.table import SensitivityTable
    from workers.messages import ChunkProgress, Done
    from workers.prepare import prepare
    from workers.ray_jobs import run_job

    spec = _spec()
    queue = Queue(actor_options={"num_cpus": 0})
    out = ray.get(run_job.remote([spec], {}, None, 2, queue), timeout=600)
    messages = queue.get_nowait_batch(queue.qsize())
    assert isinstance(out, Done) and out.table is not None
    got = SensitivityTable.from_dict(out.table)
    assert got.diagnostics["chunks"] == 2 and got.diagnostics["shipped"] is True
    assert sum(got.diagnostics["rows_per_chunk"]) == 36
    assert {m.chunk for m in messages if isinstance(m, ChunkProgress)} == {0, 1}

    p = prepare(SearchSpec(**spec), with_evals=False)
    ctx = ProxyContext(p.lm.model, p.layers, p.modules, p.lm.task, p.calib, p.formats, 0, None, p.table_sha256,
                       p.info, quantizer=p.quantizer)
    want = p.proxy.compute(ctx)
    assert [l.name for l in got.layers] == [l.name for l in want.layers] and got.formats == want.formats
    assert got.key == want.key  # same weights, proxy parameters, calibration data and formats
    # one torch thread per chunk here, this process's own count there: float tolerance
    np.testing.assert_allclose(got.values, want.values, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.stderr, want.stderr, rtol=1e-2, atol=1e-9)
