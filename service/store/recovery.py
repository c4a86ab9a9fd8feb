"""Jobs whose server stopped: a dead server's (no heartbeat for the lease) and a server's own
on a graceful shutdown go back to the queue, or end with the reason once their attempts are
used up. Each move is a guarded ``transition``, so a live server's jobs are never taken."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from service.db import JobRow, utcnow
from service.jobstate import JobStatus
from service.store.lifecycle import JobLifecycle


class JobRecovery(JobLifecycle):
    def recover(self, owner: str, lease_seconds: float, max_attempts: int) -> list[tuple[str, str]]:
        """Jobs of *other* servers that stopped heart-beating (server killed, machine lost) go
        back to the queue, or fail with the reason once they have used ``max_attempts``.
        Returns (id, action). A live server's jobs are never touched: their heartbeat is fresh."""
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive: a non-positive lease would take live servers' jobs")
        cutoff = utcnow() - timedelta(seconds=lease_seconds)
        with self.session() as s:
            stale = list(s.scalars(select(JobRow).where(JobRow.status == JobStatus.RUNNING, JobRow.owner != owner,
                                                        JobRow.heartbeat_at < cutoff)))
        return self._put_back_all(stale, [JobRow.heartbeat_at < cutoff], max_attempts, "its server stopped")

    def release(self, owner: str, max_attempts: int) -> list[tuple[str, str]]:
        """A server shutting down gracefully puts back *its own* running jobs at once (no lease
        wait), so another server or its next start runs them again. Returns (id, action)."""
        with self.session() as s:
            mine = list(s.scalars(select(JobRow).where(JobRow.status == JobStatus.RUNNING, JobRow.owner == owner)))
        return self._put_back_all(mine, [], max_attempts, "its server shut down")

    def _put_back_all(self, jobs: list[JobRow], guard: list, max_attempts: int, why: str) -> list[tuple[str, str]]:
        """(id, action) of each job ``_put_back`` won."""
        return [(job.id, action) for job in jobs if (action := self._put_back(job, guard, max_attempts, why))]

    def _put_back(self, job: JobRow, guard: list, max_attempts: int, why: str) -> str | None:
        """running → cancelled (cancel was asked), failed (attempts used up) or queued, as one
        conditional UPDATE on the state read (still running, same owner and attempt, plus
        ``guard``): None if lost."""
        if job.cancel_requested:
            target, values = JobStatus.CANCELLED, {"message": f"cancelled ({why})"}
        elif job.attempts >= max_attempts:
            msg = f"gave up after {job.attempts} attempts: {why} each time"
            target, values = JobStatus.FAILED, {"message": msg, "error": msg}
        else:
            target = JobStatus.QUEUED
            values = {"owner": None, "phase": None, "progress": 0.0,
                      "message": f"re-queued: {why} during attempt {job.attempts}"}
        won = self.transition(job.id, JobStatus.RUNNING, target, JobRow.owner == job.owner,
                              JobRow.attempts == job.attempts, *guard, event=(None, 0.0), **values)
        return ("requeued" if target is JobStatus.QUEUED else str(target)) if won else None
