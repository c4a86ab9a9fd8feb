"""/v1/jobs: submit (planned and validated here, torch-free; run by the dispatcher), list,
get, cancel, and the progress log, as JSON or as a Server-Sent Events stream."""
from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from service.api.common import ID, check_id, json_response, stored
from service.api.deps import SettingsDep, StoreDep
from service.api.errors import ApiError, errors
from service.api.messages import validation_message
from service.api.refs import root_hide, scrub
from service.jobstate import JobStatus
from service.schemas import TERMINAL, JobCreate, JobEvent, JobOut, JobPage
from service.store import BadCursor, Conflict, Store, decode_cursor

router = APIRouter()

MAX_SEQ = 2**31 - 1  # job_events.seq is a 32-bit INTEGER on PostgreSQL
STATUS_PATTERN = f"^({'|'.join(s.value for s in JobStatus)})$"  # ?status= takes a status by its value


def _job_json(row, policy_ids: list[str]) -> dict:
    """JobOut as plain JSON without re-validating it (the response model documents the shape): the
    stored request was validated when the job was created, and every progress poll comes here.
    Datetimes stay objects: ``json_response`` writes them (RFC 3339, UTC as Z) in C."""
    return {"id": row.id, "model_id": row.model_id, "status": row.status, "phase": row.phase,
            "progress": row.progress, "message": row.message, "request": row.request,
            "created_at": row.created_at, "started_at": row.started_at, "finished_at": row.finished_at,
            "timings": row.timings or {}, "error": row.error, "attempts": row.attempts,
            "sensitivity_id": row.sensitivity_id, "sensitivity_cached": row.sensitivity_cached,
            "policy_ids": policy_ids}


def _event_out(e) -> JobEvent:
    return JobEvent(seq=e.seq, at=e.at, status=e.status, phase=e.phase, progress=e.progress, message=e.message)


def resume_from(last_event_id: str | None, after: int) -> int:
    """Where an SSE stream resumes. A ``Last-Event-ID`` that is not a seq this server can have
    sent (not a number, or outside 0..2^31-1) is ignored, not clamped: clamping a garbage id to
    the maximum would silently skip every event, and the client's ``after`` is still valid."""
    if last_event_id and last_event_id.strip().isdigit():
        seq = int(last_event_id.strip())
        if seq <= MAX_SEQ:
            return seq
    return after


def _job(st: Store, job_id: str):
    row = stored(job_id, "job", st.get_job)
    return row


@router.post("/jobs", response_model=JobOut, status_code=201, tags=["jobs"],
             responses={200: {"model": JobOut, "description": "replay of an earlier request with this Idempotency-Key"},
                        **errors(403, 404, 409, 413, 422)})
def submit_job(body: JobCreate, request: Request, st: StoreDep, settings: SettingsDep,
               idempotency_key: str | None = Header(default=None, max_length=255)):
    from service.jobspec import plan_job
    from service.uploads import PathNotAllowed

    hint = "; register it first with POST /v1/models and use the id it returns"
    model = st.get_model(body.model_id) if ID.fullmatch(body.model_id) else None
    if model is None:
        raise ApiError(404, "unknown_model", f"no model {body.model_id[:80]!r}{hint}")
    try:
        plan = plan_job(body, model.ref, model.id, model.kind, model.info["layers"], model.info.get("max_positions"),
                        settings=settings)
    except ValidationError as e:
        raise ApiError(422, "invalid_request", validation_message(e.errors())) from None
    except PathNotAllowed as e:
        raise ApiError(403, "path_not_allowed", scrub(str(e).splitlines()[0], root_hide(settings.model_root))) from None
    except ValueError as e:
        raise ApiError(422, "invalid_request", str(e).splitlines()[0]) from None
    try:
        row, created = st.create_job(model.id, body.model_dump(mode="json"), plan.request_hash,
                                     plan.sensitivity_key, idempotency_key)
    except Conflict as e:
        raise ApiError(409, "idempotency_conflict", str(e)) from None
    request.app.state.dispatcher.wake.set()
    return json_response(_job_json(row, st.policy_ids([row.id])[row.id]), status=201 if created else 200,
                         headers={"Location": f"/v1/jobs/{row.id}"})


@router.get("/jobs", response_model=JobPage, tags=["jobs"], responses=errors(422))
def list_jobs(st: StoreDep,
              status: str | None = Query(default=None, pattern=STATUS_PATTERN),
              model_id: str | None = Query(default=None, max_length=128), cursor: str | None = None,
              limit: int = Query(default=50, ge=1, le=500)):
    if model_id is not None and not ID.fullmatch(model_id):
        return json_response({"items": [], "next_cursor": None})  # no stored model has such an id
    try:
        if cursor is not None and not ID.fullmatch(decode_cursor(cursor)[1]):
            raise BadCursor("cursor is not one this server issued; start again without ?cursor=")
        rows, nxt = st.list_jobs(status, model_id, cursor, limit)
    except BadCursor as e:
        raise ApiError(422, "invalid_cursor", str(e)) from None
    pids = st.policy_ids([r.id for r in rows])
    return json_response({"items": [_job_json(r, pids[r.id]) for r in rows], "next_cursor": nxt})


@router.get("/jobs/{job_id}", response_model=JobOut, tags=["jobs"], responses=errors(404))
def get_job(job_id: str, st: StoreDep):
    check_id(job_id, "job")
    row, pids = st.job_with_policies(job_id)
    if row is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    return json_response(_job_json(row, pids))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, tags=["jobs"], responses=errors(404, 409, 413))
def cancel_job(job_id: str, request: Request, st: StoreDep):
    _job(st, job_id)
    try:
        row = st.request_cancel(job_id)
    except Conflict as e:
        raise ApiError(409, "not_cancellable", str(e)) from None
    request.app.state.dispatcher.wake.set()
    return json_response(_job_json(row, st.policy_ids([row.id])[row.id]))


@router.get("/jobs/{job_id}/events", tags=["jobs"], response_model=list[JobEvent],
            responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                             "description": "JSON list, or an SSE stream with Accept: text/event-stream"},
                       **errors(404, 422)})
async def job_events(job_id: str, request: Request, st: StoreDep,
                     after: int = Query(default=0, ge=0, le=MAX_SEQ, description=f"only events with seq > after "
                                        f"(0..{MAX_SEQ})"),
                     last_event_id: str | None = Header(default=None, description="SSE resume point; ignored "
                                                        "unless it is a seq in 0..2^31-1")):
    """The job's progress log. With ``Accept: text/event-stream`` it is a Server-Sent
    Events stream that follows the job until it ends (event ``progress``; ``end`` last)."""
    await run_in_threadpool(_job, st, job_id)
    if "text/event-stream" not in request.headers.get("accept", ""):
        return [_event_out(e) for e in await run_in_threadpool(st.events, job_id, after)]
    return StreamingResponse(sse(request, st, job_id, resume_from(last_event_id, after)),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def sse(request: Request, st: Store, job_id: str, seq: int):
    """Follow a job's events from ``seq`` until it ends or the client goes away."""
    while True:
        events = await run_in_threadpool(st.events, job_id, seq)
        for e in events:
            seq = e.seq
            yield f"id: {e.seq}\nevent: progress\ndata: {_event_out(e).model_dump_json()}\n\n"
        job = await run_in_threadpool(st.get_job, job_id)
        if job.status in TERMINAL and not events:
            yield f"event: end\ndata: {json.dumps({'status': job.status})}\n\n"
            return
        if await request.is_disconnected():
            return
        await asyncio.sleep(0.25)
