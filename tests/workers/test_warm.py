"""Warm Ray workers (workers/warm.py): one per CPU of each node, the engine imported, and the
processes Ray keeps are the ones a job's later tasks run in."""
from __future__ import annotations

import logging
import os

import pytest

pytestmark = pytest.mark.integration


def test_warm_workers_import_the_engine_and_serve_the_next_tasks():
    import ray

    from workers.warm import prewarm

    if ray.is_initialized():  # a test before this one in the same process left its Ray up
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        warmed = ray.get(prewarm())
        assert len(warmed) == 2 and len({w["pid"] for w in warmed}) == 2  # one process per CPU
        assert {w["node"] for w in warmed} == {ray.get_runtime_context().get_node_id()}
        assert ray.get(prewarm(per_node=1)) and len(ray.get(prewarm(per_node=0))) == 0

        @ray.remote(num_cpus=1)
        def engine_loaded() -> tuple[int, bool]:
            import sys
            return os.getpid(), "workers.pipeline" in sys.modules and "torch" in sys.modules

        later = ray.get([engine_loaded.remote() for _ in range(2)])
    finally:
        ray.shutdown()
    assert all(loaded for _, loaded in later)  # no task of the job pays the engine's import
    assert {pid for pid, _ in later} <= {w["pid"] for w in warmed}
