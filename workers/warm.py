"""Warm Ray workers: the engine imported in every worker process before the first job needs it.

A fresh Ray worker spends 3-5 s importing torch, transformers and the engine before it measures
anything. A job meets that cost twice: in its own task and, worse, in every sensitivity chunk
that starts a fresh process on another node, where it lands on the critical path of the fan-out
(on MiniLM the chunk's import took as long as a third of its measuring). The server therefore
runs one warm-up task per CPU of every node when it connects to Ray: Ray keeps those processes
(as many idle workers as the node has CPUs) and gives them the job's tasks later, so a job's
chunks start measuring at once. Nothing is loaded that a job could depend on: only imports."""
from __future__ import annotations

import os

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

# what a job's task and its chunks import before their first forward pass: the engine, and the
# modeling code of the builtin models' architectures (transformers imports it on first use: 2.5 s
# for BERT's, paid again by a chunk unpickling the job's MiniLM)
ENGINE_MODULES = ("torch", "transformers", "transformers.modeling_utils", "transformers.models.bert.modeling_bert",
                  "transformers.models.llama.modeling_llama", "workers.pipeline", "workers.prepare",
                  "workers.sources", "proxies.measured", "proxies.registry", "search.solvers")


@ray.remote(num_cpus=1, max_retries=0)
def warm_worker() -> dict:
    """Import the engine in this worker process; returns its node and pid."""
    import importlib

    for name in ENGINE_MODULES:
        importlib.import_module(name)
    return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}


def prewarm(per_node: int | None = None) -> list:
    """Start one ``warm_worker`` per CPU (at most ``per_node``) on every alive node, pinned to
    it; returns their refs without waiting (the server starts serving meanwhile, and a job that
    arrives first just waits for a CPU like any other task)."""
    refs = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        cpus = int(node.get("Resources", {}).get("CPU", 0))
        n = cpus if per_node is None else min(cpus, per_node)
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        refs += [warm_worker.options(scheduling_strategy=strategy).remote() for _ in range(n)]
    return refs
