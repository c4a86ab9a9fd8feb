"""The job task on real Ray: its torch threads on a local 2-CPU Ray, and a sensitivity table
measured on a two-node cluster (``ray.cluster_utils.Cluster``) that equals the one computed in
one process: chunking, cost balancing, the other node's part launched at the job's start (or the
context shipped through the object store), and a part measured again by the job task when the
other node's did not match change nothing in the numbers."""
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

    from search.table import SensitivityTable
    from workers.messages import ChunkProgress, Done
    from workers.ray_jobs import run_job

    spec = _spec()
    queue = Queue(actor_options={"num_cpus": 0})
    out = ray.get(run_job.remote([spec], {}, None, 2, queue), timeout=600)
    messages = queue.get_nowait_batch(queue.qsize())
    assert isinstance(out, Done) and out.table is not None
    got = SensitivityTable.from_dict(out.table)
    d = got.diagnostics
    assert d["chunks"] == 2 and d["launched_at_start"] is True and d["shipped"] is False
    assert sum(d["rows_per_chunk"]) == 36 and "measured_here" not in d
    assert len(set(d["chunk_nodes"])) == 2 and all(s is not None for s in d["chunk_prepare_seconds"])
    assert {m.chunk for m in messages if isinstance(m, ChunkProgress)} == {0, 1}
    _same_table(got, spec)


def _same_table(got, spec: dict) -> None:
    """``got`` equals the table one process measures for ``spec``."""
    from proxies.base import ProxyContext
    from workers.prepare import prepare

    p = prepare(SearchSpec(**spec), with_evals=False)
    ctx = ProxyContext(p.lm.model, p.layers, p.modules, p.lm.task, p.calib, p.formats, 0, None, p.table_sha256,
                       p.info, quantizer=p.quantizer)
    want = p.proxy.compute(ctx)
    assert [l.name for l in got.layers] == [l.name for l in want.layers] and got.formats == want.formats
    assert got.key == want.key  # same weights, proxy parameters, calibration data and formats
    # one torch thread per chunk here, this process's own count there: float tolerance
    np.testing.assert_allclose(got.values, want.values, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.stderr, want.stderr, rtol=1e-2, atol=1e-9)


@pytest.mark.parametrize("way", ["shipped", "mismatched share"])
def test_a_fan_out_without_shares_ships_the_context_and_a_mismatched_share_is_measured_again(two_nodes, way):
    """Called without shares launched at the job's start (nodes that joined later), the fan-out
    ships its context through the object store. A share dealt against another split than the job
    task's (here: as if the job task had 5 workers) is not taken: the job task measures its rows
    itself, says so in the table's diagnostics, and the table is still the one-process table."""
    import ray

    from search.table import SensitivityTable

    spec = _spec()

    @ray.remote(num_cpus=1)
    def job_task(spec_d: dict, mismatched: bool) -> dict:
        from proxies.base import ProxyContext
        from workers.prepare import prepare
        from workers.ray_jobs import Shares, _fan_out, measure_share, torch_threads

        torch_threads()
        p = prepare(SearchSpec(**spec_d), with_evals=False)
        ctx = ProxyContext(p.lm.model, p.layers, p.modules, p.lm.task, p.calib, p.formats, 0, None, p.table_sha256,
                           p.info, quantizer=p.quantizer)
        shares = Shares([measure_share.remote(spec_d, {}, (1, 5, 1))], 1, 1) if mismatched else None
        return _fan_out(spec_d, {}, 2, None, None, shares)(p.proxy, ctx).to_dict()

    got = SensitivityTable.from_dict(ray.get(job_task.remote(spec, way != "shipped"), timeout=600))
    d = got.diagnostics
    assert d["chunks"] == 2 and sum(d["rows_per_chunk"]) == 36
    if way == "shipped":
        assert d["shipped"] is True and d["launched_at_start"] is False and "measured_here" not in d
    else:
        assert d["launched_at_start"] is True and d["measured_here"] == d["rows_per_chunk"][1]
        assert "other rows or parameters" in d["chunk_errors"][0]
    _same_table(got, spec)
