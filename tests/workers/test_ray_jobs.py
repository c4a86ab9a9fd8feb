"""The Ray side's worker cache and job task (how rows are dealt to chunks and threads to jobs:
tests/workers/test_ray_balance.py; multi-node: tests/workers/test_ray_cluster.py)."""
from __future__ import annotations

import os

import numpy as np
import pytest


def test_two_menus_on_one_worker_get_their_own_formats():
    """In one process (one Ray worker), two specs on the same model and data with different
    menus get their own formats; the model itself is loaded once and shared."""
    from search.formats import make_formats
    from search.spec import SearchSpec
    from workers import ray_jobs

    ray_jobs._CACHE.clear()
    a = dict(SearchSpec(model="builtin:digits-cnn", budgets={"avg_bits": 4.0}, bits=[2, 4], group_size=16,
                        n_calib=16).model_dump())
    b = {**a, "bits": [3, 8], "group_size": 32}
    pa = ray_jobs._prepared(a)
    pb = ray_jobs._prepared(b)
    assert [f.label for f in pa.formats] == [f.label for f in make_formats([2, 4], 16, False)]
    assert [f.label for f in pb.formats] == [f.label for f in make_formats([3, 8], 32, False)]
    assert pb.lm is pa.lm  # same reference: not reloaded
    assert ray_jobs._prepared(a).formats == pa.formats  # back to the first menu: its own formats again


@pytest.mark.integration
def test_two_jobs_with_different_menus_on_one_ray_worker_get_their_own_tables():
    """A real Ray instance with one CPU, so one worker process runs both chunks one after the
    other (and keeps its cache between them): each job's rows have its own menu's columns and
    equal what a fresh process measures for that menu."""
    import ray

    from search.spec import SearchSpec
    from workers import ray_jobs
    from workers.ray_jobs import measure_chunk

    a = SearchSpec(model="builtin:digits-cnn", budgets={"avg_bits": 4.0}, bits=[2, 4], group_size=16,
                   n_calib=16, compute_dtype="float32").model_dump()  # bf16 sums vary with the thread count
    b = {**a, "bits": [2, 3, 8], "group_size": 32}
    ray.init(address="local", num_cpus=1, include_dashboard=False, ignore_reinit_error=True)
    try:
        @ray.remote(num_cpus=1)
        def pid() -> int:
            return os.getpid()
        ta = ray.get(measure_chunk.remote(a, {}, [0, 1], 0, 1))
        p1 = ray.get(pid.remote())
        tb = ray.get(measure_chunk.remote(b, {}, [0, 1], 0, 1))
        p2 = ray.get(pid.remote())
    finally:
        ray.shutdown()
    assert p1 == p2  # one worker process ran everything
    assert np.array(ta["values"]).shape == (2, 2) and np.array(tb["values"]).shape == (2, 3)
    assert np.array(tb["stderr"]).shape == (2, 3)  # the measured cells' paired standard errors travel too
    ray_jobs._CACHE.clear()  # a fresh process's view of job b
    from proxies.base import ProxyContext
    from proxies.registry import get_proxy
    p = ray_jobs._prepared(b)
    ctx = ProxyContext(p.lm.model, p.layers, p.modules, p.lm.task, p.calib, p.formats, 0, None, p.lm.sha256, p.info,
                       quantizer=p.quantizer)
    fresh = get_proxy("measured", layers=[0, 1]).compute(ctx)
    np.testing.assert_allclose(np.array(tb["values"]), fresh.values[[0, 1]], rtol=1e-6, atol=1e-9)
    # a standard error of near-equal per-sample losses (~1e-8 here) moves in its third digit with
    # the thread count (the worker runs one torch thread, this process two): it travels, not bit-exact
    np.testing.assert_allclose(np.array(tb["stderr"]), fresh.stderr[[0, 1]], rtol=1e-2, atol=1e-12)


@pytest.mark.integration
def test_a_job_task_sends_typed_messages_and_returns_its_outcome():
    """A job on a real Ray: its queue carries phase progress, the two sensitivity chunks' progress
    and a marker per finished budget point; it returns a result per point and the table it
    measured. A user error comes back as ``Failed`` with its reason, not as a raised error."""
    import ray
    from ray.util.queue import Queue

    from search.spec import SearchSpec
    from workers.messages import ChunkProgress, Done, Failed, PointDone, Progress
    from workers.ray_jobs import run_job

    specs = [SearchSpec(model="builtin:digits-cnn", budgets={"avg_bits": b}, proxy="measured", solver="ilp",
                        refine=False, n_calib=16).model_dump() for b in (3.3, 4.3)]
    ray.init(address="local", num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        queue = Queue()
        out = ray.get(run_job.remote(specs, {}, None, 2, queue))
        messages = queue.get_nowait_batch(queue.qsize())
        bad = ray.get(run_job.remote([{**specs[0], "model": "builtin:nope"}], {}, None, 1, None))
    finally:
        ray.shutdown()
    assert isinstance(out, Done) and len(out.results) == 2 and out.table is not None
    assert all(r.policy and r.timings for r in out.results)
    # one node: the job task measures every row itself, on both CPUs (the two-node cluster test
    # in test_ray_cluster.py covers chunks on other nodes)
    assert {type(m) for m in messages} == {Progress, PointDone}
    assert not any(isinstance(m, ChunkProgress) for m in messages) and "chunks" not in out.table["timing"]
    assert [m for m in messages if isinstance(m, PointDone)] == [PointDone(1, 2), PointDone(2, 2)]
    assert {"load", "sensitivity", "solve", "evaluate"} <= {m.phase for m in messages if isinstance(m, Progress)}
    assert isinstance(bad, Failed) and "nope" in bad.error
