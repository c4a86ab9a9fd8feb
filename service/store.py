"""The durable store: every model, job (with its progress log), sensitivity table and policy.

All SQL goes through the ORM. Every change of a job's status goes through ``transition``: one
conditional UPDATE (``… WHERE status = 'queued'``) on a move the state machine allows
(service/jobstate.py), so two servers or a cancel arriving mid-finish never both win. Works the
same on SQLite (WAL) and PostgreSQL."""
from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import select, tuple_, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.db import JobEventRow, JobRow, ModelRow, PolicyRow, SensitivityRow, make_engine, utcnow
from service.jobstate import JobStatus, check

MIGRATIONS = Path(__file__).with_name("migrations")


class Conflict(Exception):
    """An Idempotency-Key reused with a different request body, or an impossible transition."""


class BadCursor(ValueError):
    pass


def migrate(url: str) -> None:
    """Bring the schema to the newest Alembic revision (the server does this on start)."""
    cfg = Config(str(MIGRATIONS / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, "head")


def new_id() -> str:
    return uuid.uuid4().hex


def encode_cursor(row) -> str:
    return base64.urlsafe_b64encode(f"{row.created_at.isoformat()}|{row.id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        at, jid = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(at), jid
    except Exception:
        raise BadCursor("cursor is not one this server issued; start again without ?cursor=") from None


class Store:
    def __init__(self, url: str, engine: Engine | None = None):
        self.url = url
        self.engine = engine or make_engine(url)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._session() as s:
            try:
                yield s
                s.commit()
            except Exception:
                s.rollback()
                raise

    def ping(self) -> None:
        with self.session() as s:
            s.execute(select(1))

    # models -------------------------------------------------------------------------------
    def add_model(self, info: dict) -> ModelRow:
        """Insert a model or return the existing record with the same weights sha256."""
        existing = self.get_model(info["id"])
        if existing:
            return existing
        row = ModelRow(id=info["id"], ref=info["ref"], kind=info["kind"], metric=info["metric"],
                       n_layers=info["n_layers"], n_weights=info["n_weights"],
                       info={"layers": info["layers"], "max_positions": info.get("max_positions")})
        try:
            with self.session() as s:
                s.add(row)
        except IntegrityError:  # registered concurrently: same weights, same record
            return self.get_model(info["id"])
        return row

    def get_model(self, model_id: str) -> ModelRow | None:
        with self.session() as s:
            return s.get(ModelRow, model_id)

    def list_models(self) -> list[ModelRow]:
        with self.session() as s:
            return list(s.scalars(select(ModelRow).order_by(ModelRow.created_at.desc())))

    # jobs ---------------------------------------------------------------------------------
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

    def _event(self, s: Session, job_id: str, status: str, phase: str | None, progress: float, message: str) -> None:
        s.add(JobEventRow(job_id=job_id, at=utcnow(), status=status, phase=phase, progress=progress, message=message))

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

    # sensitivity tables and policies ------------------------------------------------------
    def table_by_key(self, key: str) -> SensitivityRow | None:
        with self.session() as s:
            return s.scalars(select(SensitivityRow).where(SensitivityRow.key == key)).first()

    def put_table(self, key: str, model_id: str, data: dict) -> str:
        found = self.table_by_key(key)
        if found:
            return found.id
        row = SensitivityRow(id=new_id(), key=key, model_id=model_id, proxy=data["proxy"], data=data, created_at=utcnow())
        try:
            with self.session() as s:
                s.add(row)
        except IntegrityError:
            return self.table_by_key(key).id
        return row.id

    def list_tables(self, model_id: str) -> list[SensitivityRow]:
        with self.session() as s:
            return list(s.scalars(select(SensitivityRow).where(SensitivityRow.model_id == model_id)
                                  .order_by(SensitivityRow.created_at.desc())))

    def get_table(self, table_id: str) -> SensitivityRow | None:
        with self.session() as s:
            return s.get(SensitivityRow, table_id)

    def get_policy(self, policy_id: str) -> PolicyRow | None:
        with self.session() as s:
            return s.get(PolicyRow, policy_id)

    def list_policies(self, model_id: str, limit: int = 500) -> list[PolicyRow]:
        with self.session() as s:
            return list(s.scalars(select(PolicyRow).where(PolicyRow.model_id == model_id)
                                  .order_by(PolicyRow.created_at.desc()).limit(limit)))
