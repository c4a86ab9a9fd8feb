"""A job's lifecycle as a state machine: the statuses, the moves between them, in one place.

    queued ──claim──▶ running ──succeed──▶ succeeded
       │                │ ├────fail─────▶ failed
       │                │ └──cancel─────▶ cancelled
       └──cancel────────┼──────────────▶ cancelled
                        └──put back (its server stopped or shut down)──▶ queued

Every change of status in the store goes through ``Store.transition``, one conditional UPDATE
that names the state it expects, so two servers racing for a job cannot both win, and a move
not drawn here is a programming error. Standard library only: the lean SDK and the CLI read it."""
from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_terminal(self) -> bool:
        return not TRANSITIONS[self]


TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}
TERMINAL: tuple[JobStatus, ...] = tuple(s for s in JobStatus if s.is_terminal())


class TransitionError(ValueError):
    """A status change the state machine does not allow (a bug in the caller, never user input)."""


def allowed(source: JobStatus | str, target: JobStatus | str) -> bool:
    return JobStatus(target) in TRANSITIONS[JobStatus(source)]


def check(sources: tuple[JobStatus, ...], target: JobStatus) -> None:
    """Refuse a transition any of whose expected sources may not move to ``target``."""
    bad = [s for s in sources if not allowed(s, target)]
    if bad:
        raise TransitionError(f"a job may not go from {', '.join(bad)} to {target}")
