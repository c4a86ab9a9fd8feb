"""Jobs as the API sees them: created once per Idempotency-Key, read by id (the hot path of
every poll), listed page by page and replayed from their event log. No status changes here:
those go through ``JobLifecycle.transition``."""
from __future__ import annotations

from sqlalchemy import select, tuple_
from sqlalchemy.exc import IntegrityError

from service.db import JobEventRow, JobRow, PolicyRow, utcnow
from service.jobstate import JobStatus
from service.store.base import Conflict, StoreBase, decode_cursor, encode_cursor, new_id


class JobRecords(StoreBase):
    def create_job(self, model_id: str, request: dict, request_hash: str, sensitivity_key: str,
                   idempotency_key: str | None) -> tuple[JobRow, bool]:
        """(job, created). The same key with the same body returns the first job; the same key
        with another body raises Conflict."""
        if idempotency_key:
            found = self._by_key(idempotency_key)
            if found:
                return self._same(found, request_hash), False
        row = JobRow(id=new_id(), model_id=model_id, status=JobStatus.QUEUED, phase=None, progress=0.0, message=JobStatus.QUEUED,
                     request=request, request_hash=request_hash, idempotency_key=idempotency_key,
                     sensitivity_key=sensitivity_key, attempts=0, cancel_requested=False, timings={},
                     sensitivity_cached=False, created_at=utcnow())
        try:
            with self.session() as s:
                s.add(row)
                s.flush()
                s.add(JobEventRow(job_id=row.id, at=row.created_at, status=JobStatus.QUEUED, phase=None, progress=0.0,
                                  message=JobStatus.QUEUED))
        except IntegrityError:
            found = self._by_key(idempotency_key) if idempotency_key else None
            if not found:
                raise
            return self._same(found, request_hash), False
        return row, True

    def _by_key(self, key: str) -> JobRow | None:
        with self.session() as s:
            return s.scalars(select(JobRow).where(JobRow.idempotency_key == key)).first()

    @staticmethod
    def _same(row: JobRow, request_hash: str) -> JobRow:
        if row.request_hash != request_hash:
            raise Conflict(f"Idempotency-Key was already used for job {row.id} with a different request body; "
                           "use a new key for a new job")
        return row

    def get_job(self, job_id: str) -> JobRow | None:
        with self.session() as s:
            return s.get(JobRow, job_id)

    def job_with_policies(self, job_id: str) -> tuple[JobRow | None, list[str]]:
        """The hot path of every poll: one session, two indexed lookups."""
        with self._session() as s:
            row = s.get(JobRow, job_id)
            if row is None:
                return None, []
            return row, list(s.scalars(select(PolicyRow.id).where(PolicyRow.job_id == job_id)
                                       .order_by(PolicyRow.position)))

    def list_jobs(self, status: str | None = None, model_id: str | None = None, cursor: str | None = None,
                  limit: int = 50) -> tuple[list[JobRow], str | None]:
        q = select(JobRow.__table__)  # Core rows: no ORM identity map for a read-only page
        if status:
            q = q.where(JobRow.status == status)
        if model_id:
            q = q.where(JobRow.model_id == model_id)
        if cursor:
            at, jid = decode_cursor(cursor)
            q = q.where(tuple_(JobRow.created_at, JobRow.id) < tuple_(at, jid))  # a row value: one index range
        q = q.order_by(JobRow.created_at.desc(), JobRow.id.desc()).limit(limit + 1)
        with self._session() as s:
            rows = list(s.execute(q))
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, encode_cursor(rows[-1]) if more and rows else None

    def policy_ids(self, job_ids: list[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {j: [] for j in job_ids}
        if not job_ids:
            return out
        with self._session() as s:
            for pid, jid in s.execute(select(PolicyRow.id, PolicyRow.job_id).where(PolicyRow.job_id.in_(job_ids))
                                      .order_by(PolicyRow.position)):
                out[jid].append(pid)
        return out

    def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[JobEventRow]:
        with self.session() as s:
            return list(s.scalars(select(JobEventRow).where(JobEventRow.job_id == job_id, JobEventRow.seq > after)
                                  .order_by(JobEventRow.seq).limit(limit)))
