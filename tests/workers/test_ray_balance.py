"""Pure pieces of the Ray side: how a sensitivity table's rows are split into chunks by cost,
and how many torch threads a job task takes on its node."""
from __future__ import annotations

import fcntl
import itertools
import os

import pytest

from workers.ray_jobs import NodeLedger, balance_rows, job_threads, layer_blocks, row_costs

# MiniLM-L6: 6 blocks × 6 layers, 4 formats
MINILM_BLOCKS = [i // 6 for i in range(36)]


def load(parts, costs):
    return [sum(costs[r] for r in p) for p in parts]


def test_a_rows_cost_is_the_blocks_from_its_own_to_the_end_times_the_formats():
    assert row_costs([0, 5, 2], 6, 4) == [28.0, 8.0, 20.0]
    assert row_costs([0, 0], 1, 3) == [6.0, 6.0]  # no trunk: every row the same


def test_balanced_chunks_cover_every_row_once_with_near_equal_costs():
    costs = row_costs(MINILM_BLOCKS, 6, 4)
    for n in (2, 3, 4, 5, 7):
        parts = balance_rows(costs, n)
        assert sorted(itertools.chain(*parts)) == list(range(36)) and len(parts) == n
        assert all(p == sorted(p) for p in parts)
        loads = load(parts, costs)
        # LPT: the longest chunk exceeds the ideal by less than one row's cost
        assert max(loads) - sum(costs) / n < max(costs), (n, loads)
    assert load(balance_rows(costs, 2), costs) == [sum(costs) / 2] * 2  # MiniLM splits exactly in two


def test_contiguous_or_count_balanced_splits_lose_to_the_cost_split():
    """A model of 8 blocks with one layer each (costs 9, 8, …, 2): round-robin by count gives
    chunk 0 the rows of blocks 0, 2, 4, 6 (24 against 20); the cost split gives 22 and 22."""
    costs = row_costs(list(range(8)), 8, 1)
    assert max(load([list(range(0, 8, 2)), list(range(1, 8, 2))], costs)) == 24
    assert load(balance_rows(costs, 2), costs) == [22, 22]


def test_equal_costs_are_dealt_round_robin_and_extra_chunks_are_dropped():
    assert balance_rows([1.0] * 5, 2) == [[0, 2, 4], [1, 3]]
    assert balance_rows([1.0] * 3, 8) == [[0], [1], [2]]
    assert balance_rows([2.0, 1.0], 1) == [[0, 1]]


def test_the_job_task_takes_its_nodes_share_and_all_rows_alone():
    """Rows dealt by cost into own + others parts; the job task (first) takes ``own`` of them;
    with no other node it measures every row itself."""
    from workers.ray_jobs import job_share
    costs = row_costs(MINILM_BLOCKS, 6, 4)
    assert job_share(costs, 2, 0) == [list(range(36))]
    assert job_share([3.0], 1, 4) == [[0]]
    parts = job_share(costs, 1, 1)
    assert len(parts) == 2 and sorted(itertools.chain(*parts)) == list(range(36))
    a, b = load(parts, costs)
    assert abs(a - b) <= max(costs)  # balanced by cost
    mine, *rest = job_share(costs, 2, 2)  # a 2-thread job task and two 1-CPU chunks elsewhere
    assert len(rest) == 2 and sorted(mine + list(itertools.chain(*rest))) == list(range(36))
    total = sum(costs)
    assert sum(costs[r] for r in mine) == pytest.approx(total / 2, abs=max(costs))
    assert all(sum(costs[r] for r in p) == pytest.approx(total / 4, abs=max(costs)) for p in rest)


def test_layer_blocks_follow_the_trunk():
    from torch import nn

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(2, 2)
            self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)) for _ in range(3)])
            self.head = nn.Linear(2, 2)

    names = ["embed", "blocks.0.0", "blocks.0.1", "blocks.2.1", "head"]
    assert layer_blocks(M(), names) == ([0, 0, 0, 2, 0], 3)
    assert layer_blocks(nn.Sequential(nn.Linear(2, 2)), ["0"]) == ([0], 1)  # no trunk: all rows alike


@pytest.mark.parametrize("node_cpus, jobs, chunk_cpus, granted, cores, want", [
    (2, 1, 0, 1, 2, 2),     # a lone job on a 2-CPU node takes both
    (2, 2, 0, 1, 2, 1),     # two jobs share it
    (16, 3, 0, 1, 16, 5),   # three jobs on 16: 5 each
    (2, 1, 1, 1, 2, 1),     # beside another job's 1-CPU chunk
    (4, 1, 4, 1, 4, 1),     # chunks hold every CPU: never below the granted one
    (16, 1, 0, 1, 2, 2),    # a node that declares more CPUs than the process may use
    (8, 1, 0, 2, None, 8),
    (1, 5, 0, 2, 8, 2),     # never below what Ray granted
    (4, 0, 0, 1, 4, 4),     # a job not in the ledger (best effort) counts as one
])
def test_job_threads(node_cpus, jobs, chunk_cpus, granted, cores, want):
    assert job_threads(node_cpus, jobs, chunk_cpus, granted, cores) == want


def test_ledger_counts_live_tasks_and_forgets_dead_ones(tmp_path):
    ledger = NodeLedger(tmp_path / "node")
    assert ledger.running() == (0, 0)  # no folder yet
    with ledger.hold("job", 1), ledger.hold("job", 1), ledger.hold("chunk", 2), ledger.hold("chunk", 1):
        assert ledger.running() == (2, 3)
        # a task killed while holding its file: the kernel dropped its lock, the file stays
        (tmp_path / "node" / "job-1-deadbeef").touch()
        (tmp_path / "node" / "chunk-4-deadbeef").touch()
        assert ledger.running() == (2, 3)
        assert not (tmp_path / "node" / "job-1-deadbeef").exists()
    assert ledger.running() == (0, 0) and os.listdir(tmp_path / "node") == []


def test_ledger_counts_a_lock_held_by_another_process(tmp_path):
    """flock belongs to the open file: a task in another process is counted until it dies."""
    import subprocess
    import sys
    import time

    folder = tmp_path / "node"
    folder.mkdir()
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('ok', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder / "job-1-other")], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "ok"
        assert NodeLedger(folder).running() == (1, 0)
    finally:
        proc.kill()
        proc.wait()
    time.sleep(0.05)
    assert NodeLedger(folder).running() == (0, 0) and not (folder / "job-1-other").exists()


def test_ledger_is_best_effort_where_it_cannot_write(tmp_path):
    (tmp_path / "file").write_text("")
    ledger = NodeLedger(tmp_path / "file" / "node")  # a folder under a file: cannot be made
    with ledger.hold("job", 1):
        assert ledger.running() == (0, 0)
    assert fcntl  # the ledger needs POSIX locks; this test suite runs where they exist


def test_poster_without_a_queue_or_with_a_plain_one():
    """No queue: nothing; a queue that is no Ray queue (no actor) gets ``put(…, block=False)``."""
    from workers.messages import Progress
    from workers.ray_jobs import Poster

    Poster(None)(Progress("load", 0.0, "x"))
    got = []

    class Plain:
        def put(self, item, block=True):
            got.append((item, block))
    post = Poster(Plain())
    post(Progress("load", 0.5, "y"))
    post.flush()
    assert got == [(Progress("load", 0.5, "y"), False)]


def test_poster_sends_a_phase_at_once_and_its_later_messages_together(monkeypatch):
    """One actor call per message cost the node CPU: messages of one phase within ``every``
    seconds of the last call wait for the next one (or ``flush``); a new phase goes at once; no
    message is lost and the order is kept."""
    from types import SimpleNamespace

    from workers import ray_jobs
    from workers.messages import Progress
    from workers.ray_jobs import Poster

    clock = SimpleNamespace(now=10.0)
    monkeypatch.setattr(ray_jobs, "time", SimpleNamespace(monotonic=lambda: clock.now, perf_counter=lambda: clock.now))
    monkeypatch.setattr(ray_jobs.ray, "get", lambda ref, timeout=None: ref)
    calls: list[list] = []
    actor = SimpleNamespace(put_nowait_batch=SimpleNamespace(remote=lambda items: calls.append(list(items)) or "ref"))
    post = Poster(SimpleNamespace(actor=actor), every=0.5)
    msgs = [Progress("refine", i / 10, f"eval {i}") for i in range(4)]
    post(msgs[0])  # a new phase: at once
    post(msgs[1])
    post(msgs[2])  # within 0.5 s: they wait
    assert calls == [[msgs[0]]]
    clock.now += 0.6
    post(msgs[3])  # the next call after 0.5 s takes the waiting ones along
    assert calls == [[msgs[0]], msgs[1:4]]
    post(Progress("refine", 0.9, "late"))
    post(Progress("evaluate", 0.0, "next phase"))  # a new phase goes at once, with what waited
    assert calls[-1] == [Progress("refine", 0.9, "late"), Progress("evaluate", 0.0, "next phase")]
    post(Progress("evaluate", 0.5, "tail"))
    post.flush()  # the job's end: nothing stays behind
    assert calls[-1] == [Progress("evaluate", 0.5, "tail")] and not post.pending
