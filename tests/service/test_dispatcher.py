"""The progress bar arithmetic: monotone within a budget point and across points, below 1
until the job has really finished. And how the dispatcher turns each message from a job's Ray
tasks into store calls, without Ray: a list for the job's queue, a recording store and a
hand-moved clock."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from service import dispatcher as dispatcher_mod
from service.config import Settings
from service.dispatcher import WEIGHTS, Dispatcher, Running, overall
from workers.messages import ChunkProgress, Done, Failed, PointDone, PointResult, Progress


def test_progress_is_monotone_over_phases_and_points():
    seq = [overall(p, f, point, 3) for point in range(3) for p in WEIGHTS for f in (0.0, 0.5, 1.0)]
    assert seq == sorted(seq)
    assert seq[0] == 0.0 and max(seq) < 1.0
    assert abs(sum(WEIGHTS.values()) - 1.0) < 1e-9


def test_out_of_range_fractions_are_clamped():
    assert overall("sensitivity", -1, 0, 1) == overall("sensitivity", 0, 0, 1)
    assert overall("sensitivity", 7, 0, 1) == overall("sensitivity", 1, 0, 1)


class ListQueue:
    """The part of ``ray.util.queue.Queue`` that ``_drain`` uses."""

    def __init__(self) -> None:
        self.items: list = []

    def qsize(self) -> int:
        return len(self.items)

    def get_nowait_batch(self, n: int) -> list:
        out, self.items = self.items[:n], self.items[n:]
        return out


class RecordingStore:
    def __init__(self, cached_table: str | None = None) -> None:
        self.calls: list[tuple] = []
        self.cached_table = cached_table

    def progress(self, job_id, owner, phase, progress, message, log):
        self.calls.append(("progress", phase, progress, message, log))

    def fail(self, job_id, owner, error):
        self.calls.append(("fail", error))

    def cancelled(self, job_id, owner, message="cancelled"):
        self.calls.append(("cancelled", message))

    def get_job(self, job_id):
        return SimpleNamespace(sensitivity_key="key", model_id="model")

    def put_table(self, key, model_id, data):
        self.calls.append(("put_table", key, model_id, data))
        return "new-table"

    def table_by_key(self, key):
        return SimpleNamespace(id=self.cached_table) if self.cached_table else None

    def succeed(self, job_id, owner, policies, timings, table_id, cached):
        self.calls.append(("succeed", policies, timings, table_id, cached))


@pytest.fixture
def world(monkeypatch):
    """A dispatcher on a recording store, one running job of two budget points, and a clock."""
    clock = SimpleNamespace(now=100.0)
    monkeypatch.setattr(dispatcher_mod, "time", SimpleNamespace(monotonic=lambda: clock.now))
    store = RecordingStore()
    d = Dispatcher(store, Settings())
    r = Running("job", None, ListQueue(), points=2, cached=False)

    def drain(*messages) -> list[tuple]:
        store.calls.clear()
        r.queue.items.extend(messages)
        d._drain(r, force=True)  # these tests are about what is written; test_the_queue_is_read… about when
        return list(store.calls)

    return SimpleNamespace(d=d, r=r, store=store, clock=clock, drain=drain)


def test_phase_changes_are_logged_at_once_even_inside_one_batch(world):
    calls = world.drain(Progress("load", 0.0, "a"), Progress("load", 0.5, "b"), Progress("calibrate", 0.0, "c"),
                        Progress("calibrate", 0.4, "d"))
    assert calls == [("progress", "load", overall("load", 0.0, 0, 2), "a", True),
                     ("progress", "load", overall("load", 0.5, 0, 2), "b", True),  # the old phase's last word
                     ("progress", "calibrate", overall("calibrate", 0.0, 0, 2), "c", True)]
    assert world.r.phase == "calibrate"


def test_progress_within_a_phase_is_throttled_and_logged_every_two_seconds(world):
    world.drain(Progress("calibrate", 0.0, "a"))
    world.clock.now += 0.5
    assert world.drain(Progress("calibrate", 0.5, "b")) == [
        ("progress", "calibrate", overall("calibrate", 0.5, 0, 2), "b", False)]
    world.clock.now += 0.1
    assert world.drain(Progress("calibrate", 0.6, "c")) == []  # under 0.3 s since the last write
    world.clock.now += 2.5
    assert world.drain(Progress("calibrate", 0.7, "d")) == [
        ("progress", "calibrate", overall("calibrate", 0.7, 0, 2), "d", True)]


def test_chunks_show_the_mean_of_their_latest_fractions(world):
    world.r.phase = "calibrate"
    calls = world.drain(ChunkProgress(0, 2, 0.5, "c0"), ChunkProgress(1, 2, 0.25, "c1"))
    assert calls == [("progress", "sensitivity", overall("sensitivity", 0.25, 0, 2), "c0", True)]
    world.clock.now += 1.0
    assert world.drain(ChunkProgress(0, 2, 1.0, "c0 done")) == [
        ("progress", "sensitivity", overall("sensitivity", 0.625, 0, 2), "c0 done", False)]


def test_a_late_message_of_an_earlier_phase_does_not_move_the_bar_back(world):
    """The job's task and its chunks post through separate queue handles: a chunk's first word
    can reach the queue before the task's last calibrate messages (seen in CI as 0.03 → 0.015)."""
    world.drain(Progress("calibrate", 0.0, "c"))
    world.clock.now += 1.0
    world.drain(ChunkProgress(1, 2, 0.5, "remote chunk"))
    assert world.r.phase == "sensitivity"
    world.clock.now += 1.0
    assert world.drain(Progress("calibrate", 1.0, "late")) == []
    world.clock.now += 1.0
    calls = world.drain(Progress("sensitivity", 0.0, "the task's own start of the phase"))
    assert [c[1:3] for c in calls] == [("sensitivity", overall("sensitivity", 0.25, 0, 2))]  # not back to 0
    # the next budget point's phases start over: not stale
    world.drain(PointDone(1, 2))
    world.clock.now += 1.0
    assert world.drain(Progress("load", 0.5, "m"))[0][1:3] == ("load", overall("load", 0.5, 1, 2))


def test_a_finished_point_moves_the_bar_and_is_logged_at_once(world):
    world.drain(Progress("refine", 0.5, "r"))
    assert world.drain(Progress("refine", 1.0, "r done"), PointDone(1, 2)) == [
        ("progress", "refine", overall("load", 0.0, 1, 2), "budget 1/2 done", True)]
    assert world.r.point == 1
    # the next point's first phase: no "last word" of refine from the point marker
    assert world.drain(Progress("load", 0.0, "m")) == [("progress", "load", overall("load", 0.0, 1, 2), "m", True)]


def test_a_point_marker_before_a_phase_change_in_one_batch(world):
    world.drain(Progress("refine", 0.5, "r"))
    assert world.drain(PointDone(1, 2), Progress("load", 0.2, "m")) == [
        ("progress", "load", overall("load", 0.2, 1, 2), "m", True),
        ("progress", "load", overall("load", 0.2, 1, 2), "m", True)]


def test_an_empty_queue_writes_nothing(world):
    assert world.drain() == []


@pytest.fixture
def finish(world, monkeypatch):
    """``_finish`` on a job task whose result is ``out`` (``ray.get`` hands it back as is)."""
    monkeypatch.setattr(dispatcher_mod.ray, "get", lambda ref: ref)

    def run(out, cancelling: bool = False, cached_table: str | None = None) -> list[tuple]:
        world.store.calls.clear()
        world.store.cached_table = cached_table
        world.r.ref, world.r.cancelling = out, cancelling
        world.d._finish(world.r)
        return list(world.store.calls)

    return run


def test_a_failed_job_is_recorded_with_its_error(finish):
    assert finish(Failed("unknown model builtin:nope")) == [("fail", "unknown model builtin:nope")]


def test_a_done_job_stores_its_table_policies_and_summed_timings(finish):
    done = Done((PointResult({"p": 1}, {"sensitivity": 2.0, "solve": 1}), PointResult({"p": 2}, {"solve": 0.5})),
                {"values": []})
    assert finish(done) == [("put_table", "key", "model", {"values": []}),
                            ("succeed", [{"p": 1}, {"p": 2}], {"sensitivity": 2.0, "solve": 1.5}, "new-table", False)]


def test_a_done_job_without_a_table_links_the_cached_one(finish):
    done = Done((PointResult({"p": 1}, {}),), None)
    assert finish(done, cached_table="old-table") == [("succeed", [{"p": 1}], {}, "old-table", False)]
    assert finish(done) == [("succeed", [{"p": 1}], {}, None, False)]


def test_a_job_cancelled_while_finishing_is_cancelled_whatever_it_returned(finish):
    assert finish(Done((), None), cancelling=True) == [("cancelled", "cancelled")]
    assert finish(Failed("x"), cancelling=True) == [("cancelled", "cancelled")]


def test_the_queue_is_read_at_most_every_half_second_and_once_more_at_the_end(world):
    """Each read is two calls to the queue's actor: a running job's queue is read at most every
    ``DRAIN_SECONDS``; the final read (``force``, when the job has ended) always happens."""
    from service.dispatcher import DRAIN_SECONDS
    world.r.queue.items.append(Progress("load", 0.0, "a"))
    world.d._drain(world.r)
    assert world.r.phase == "load" and not world.r.queue.items
    world.r.queue.items.append(Progress("calibrate", 0.0, "b"))
    world.clock.now += DRAIN_SECONDS / 2
    world.d._drain(world.r)
    assert world.r.phase == "load" and world.r.queue.items  # not read yet
    world.clock.now += DRAIN_SECONDS / 2
    world.d._drain(world.r)
    assert world.r.phase == "calibrate" and not world.r.queue.items
    world.r.queue.items.append(Progress("sensitivity", 0.0, "c"))
    world.d._drain(world.r, force=True)
    assert world.r.phase == "sensitivity"
