"""The messages a job's Ray tasks send the dispatcher: they survive pickling (Ray pickles them
through the queue actor and the task's return), are immutable, and cost no heavy import."""
from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from workers.messages import ChunkProgress, Done, Failed, Message, Outcome, PointDone, PointResult, Progress

ROOT = Path(__file__).resolve().parents[2]

SAMPLES = [
    Progress("calibrate", 0.5, "Hessians of 12 layers"),
    ChunkProgress(1, 4, 0.25, "row 3/12"),
    PointDone(2, 3),
    Done((PointResult({"choices": [0, 1]}, {"sensitivity": 1.5, "solve": 0.1}),), {"values": [[0.0, 1.0]]}),
    Done((), None),
    Failed("unknown model builtin:nope"),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_messages_survive_a_pickle_round_trip(msg):
    back = pickle.loads(pickle.dumps(msg))
    assert back == msg and type(back) is type(msg)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_messages_are_frozen(msg):
    field = dataclasses.fields(msg)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(msg, field, None)


def test_union_types_cover_the_two_channels():
    assert set(Message.__args__) == {Progress, ChunkProgress, PointDone}
    assert set(Outcome.__args__) == {Done, Failed}


def test_chunks_are_of_the_sensitivity_phase_and_points_say_how_far():
    assert ChunkProgress(0, 2, 0.5, "m").phase == "sensitivity"
    assert "phase" not in {f.name for f in dataclasses.fields(ChunkProgress)}  # not sent: always the same
    assert PointDone(1, 2).message == "budget 1/2 done"


def test_the_protocol_imports_nothing_heavy():
    """The server imports it without the engine, and the workers without the server stack."""
    probe = ("import sys, workers.messages; "
             "print(sorted(m for m in ('torch', 'ray', 'numpy', 'sqlalchemy', 'fastapi', 'pydantic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
