"""A job's way through the state machine (service/jobstate.py): claimed, progressing,
succeeded, failed or cancelled. Every status change is one conditional UPDATE through
``transition``, so two servers, or a cancel arriving mid-finish, never both win."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.db import JobRow, PolicyRow, utcnow
from service.jobstate import JobStatus, check
from service.store.base import Conflict, new_id
from service.store.jobs import JobRecords


class JobLifecycle(JobRecords):
    def transition(self, job_id: str, source: JobStatus | tuple[JobStatus, ...], target: JobStatus, *guard: Any,
                   held_by: str | None = None, message: str = "", event: bool | tuple[str | None, float] = True,
                   session: Session | None = None, **values: Any) -> bool:
        """``source`` → ``target`` as one conditional UPDATE: the job must still be in (one of)
        ``source``, held by the server ``held_by`` when given, and match every extra ``guard`` clause. Returns
        whether it won; a move the state machine does not draw raises TransitionError. The
        event log records the move with the job's phase and progress (or ``event``'s pair);
        ``session`` puts it in the caller's transaction (a success and its policies)."""
        sources = (source,) if isinstance(source, JobStatus) else tuple(source)
        check(sources, target)
        q = update(JobRow).where(JobRow.id == job_id, JobRow.status.in_(sources), *guard)
        if held_by is not None:
            q = q.where(JobRow.owner == held_by)
        values = {"message": message[:2000], **values}
        if target.is_terminal():
            values.setdefault("finished_at", utcnow())

        def run(s: Session) -> bool:
            if s.execute(q.values(status=target, **values)).rowcount != 1:
                return False
            if event is not False:
                phase, progress = (event if isinstance(event, tuple) else
                                   s.execute(select(JobRow.phase, JobRow.progress).where(JobRow.id == job_id)).one())
                self._event(s, job_id, target, phase, progress, values["message"])
            return True

        if session is not None:
            return run(session)
        with self.session() as s:
            return run(s)

    def claim(self, owner: str, limit: int) -> list[JobRow]:
        """Move up to ``limit`` of the oldest queued jobs to running for ``owner``."""
        if limit <= 0:
            return []
        with self.session() as s:
            ids = list(s.scalars(select(JobRow.id).where(JobRow.status == JobStatus.QUEUED)
                                 .order_by(JobRow.created_at).limit(limit)))
        won = []
        for jid in ids:
            now = utcnow()
            if self.transition(jid, JobStatus.QUEUED, JobStatus.RUNNING, message="starting", event=(None, 0.0),
                               owner=owner, heartbeat_at=now, started_at=now, attempts=JobRow.attempts + 1):
                won.append(jid)
        return [self.get_job(j) for j in won]

    def progress(self, job_id: str, owner: str, phase: str | None, progress: float, message: str,
                 log: bool) -> None:
        """A running job's phase and progress (not a transition: it stays running)."""
        with self.session() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.owner == owner, JobRow.status == JobStatus.RUNNING)
                      .values(phase=phase, progress=progress, message=message[:2000], heartbeat_at=utcnow()))
            if log:
                self._event(s, job_id, JobStatus.RUNNING, phase, progress, message[:2000])

    def heartbeat(self, owner: str, job_ids: list[str]) -> None:
        if job_ids:
            with self.session() as s:
                s.execute(update(JobRow).where(JobRow.id.in_(job_ids), JobRow.owner == owner,
                                               JobRow.status == JobStatus.RUNNING).values(heartbeat_at=utcnow()))

    def succeed(self, job_id: str, owner: str, policies: list[dict], timings: dict, sensitivity_id: str | None,
                cached: bool) -> bool:
        """running → succeeded, only for the job's owner: one conditional UPDATE decides, and the
        policies are written in the same transaction only when it won (a job that another
        server re-queued or a user cancelled meanwhile keeps its state and gets no policies)."""
        message = f"{len(policies)} polic{'y' if len(policies) == 1 else 'ies'}"
        with self.session() as s:
            if not self.transition(job_id, JobStatus.RUNNING, JobStatus.SUCCEEDED, held_by=owner, message=message,
                                   session=s, progress=1.0, timings=timings, sensitivity_id=sensitivity_id,
                                   sensitivity_cached=cached):
                return False
            model_id = s.execute(select(JobRow.model_id).where(JobRow.id == job_id)).scalar_one()
            for i, p in enumerate(policies):
                s.add(PolicyRow(id=new_id(), job_id=job_id, model_id=model_id, position=i, data=p, created_at=utcnow()))
        return True

    def fail(self, job_id: str, owner: str | None, error: str) -> bool:
        return self.transition(job_id, JobStatus.RUNNING, JobStatus.FAILED, held_by=owner, message=error, error=error[:4000])

    def cancelled(self, job_id: str, owner: str | None, message: str = "cancelled") -> bool:
        return self.transition(job_id, JobStatus.RUNNING, JobStatus.CANCELLED, held_by=owner, message=message)

    def request_cancel(self, job_id: str) -> JobRow | None:
        """Queued → cancelled now; running → flagged, and its owner stops the Ray work. Each is a
        conditional UPDATE, so a job claimed between the two is flagged, not cancelled under its
        server's feet."""
        if self.get_job(job_id) is None:
            return None
        if not self.transition(job_id, JobStatus.QUEUED, JobStatus.CANCELLED, message="cancelled before it started"):
            with self.session() as s:
                s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == JobStatus.RUNNING)
                          .values(cancel_requested=True, message="cancelling"))
        job = self.get_job(job_id)
        if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            raise Conflict(f"job {job_id} already {job.status}; only queued or running jobs can be cancelled")
        return job

    def cancel_requested(self, owner: str) -> list[str]:
        with self.session() as s:
            return list(s.scalars(select(JobRow.id).where(JobRow.owner == owner, JobRow.status == JobStatus.RUNNING,
                                                          JobRow.cancel_requested.is_(True))))
