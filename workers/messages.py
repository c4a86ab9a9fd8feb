"""What a job's Ray tasks tell the server's dispatcher, as typed messages instead of dicts.

Two channels carry them. While a job runs, its tasks put ``Progress`` (a pipeline phase moved),
``ChunkProgress`` (one sensitivity chunk moved) and ``PointDone`` (a budget point has its policy)
into the job's Ray queue, and the dispatcher drains them into the store. When the job task ends
it returns ``Done`` (the policies, their timings, the table it computed) or ``Failed`` (a user
error, as text, so the server needs none of the engine's exception classes); anything else
raises, and the server records the Ray error.

No message names its job: each job has its own queue and its own task, so the channel does.
Standard library only: the server imports this without torch, and Ray pickles these frozen
dataclasses by reference to this module."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Progress:
    """A pipeline phase moved: the fraction of that phase done (0..1) and what it is doing."""
    phase: str
    fraction: float
    message: str


@dataclass(frozen=True)
class ChunkProgress:
    """One sensitivity chunk (``chunk`` of ``of``) moved. Chunks run side by side, each with its
    own fraction, so the dispatcher keeps each chunk's latest and shows their mean."""
    chunk: int
    of: int
    fraction: float
    message: str
    phase: ClassVar[str] = "sensitivity"  # the only phase that is split into chunks


@dataclass(frozen=True)
class PointDone:
    """Budget point ``done`` of ``of`` has its policy: the progress bar moves on to the next
    point, and the log says so at once."""
    done: int
    of: int

    @property
    def message(self) -> str:
        return f"budget {self.done}/{self.of} done"


Message = Progress | ChunkProgress | PointDone
"""What goes through a job's progress queue."""


@dataclass(frozen=True)
class PointResult:
    """One budget point's policy (the Policy's JSON form) and its phase timings in seconds."""
    policy: dict
    timings: dict[str, float]


@dataclass(frozen=True)
class Done:
    """The job ran to its end: a result per budget point, in budget order, and the sensitivity
    table (its dict form) when this job computed one; None when it reused the cached table or
    its solver needs none, so the server stores a table only once."""
    results: tuple[PointResult, ...]
    table: dict | None = None


@dataclass(frozen=True)
class Failed:
    """The job stopped on a user error (a bad spec, model or data): the reason to show, as is."""
    error: str


Outcome = Done | Failed
"""What the job task returns."""
