"""The FastAPI application: REST under /v1 (models, jobs, policies, sensitivities), health
probes, and (later) the dashboard's static files.

Every error is JSON ``{code, message, detail}`` with a 4xx for anything the caller can fix; a
500 means a bug. Handlers that touch the database are plain ``def`` (FastAPI runs them in its
thread pool); the job work itself happens in Ray, driven by the dispatcher thread."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import ray
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.config import Settings
from service.dispatcher import Dispatcher
from service.schemas import (TERMINAL, ErrorBody, JobCreate, JobEvent, JobOut, JobPage, ModelCreate, ModelOut,
                             PolicySummary, SensitivitySummary)
from service.store import BadCursor, Conflict, Store, migrate

log = logging.getLogger("bitplan.api")
API_VERSION = "v1"
STATIC = Path(__file__).with_name("static")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, detail: Any = None):
        self.status, self.code, self.message, self.detail = status, code, message, detail


def _error(status: int, code: str, message: str, detail: Any = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(ErrorBody(code=code, message=message, detail=detail).model_dump(), status_code=status,
                        headers=headers)


def _validation_message(errors: list[dict]) -> str:
    e = errors[0]
    loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path", "header"))
    msg = e.get("msg", "invalid value")
    if e.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({e.get('ctx', {}).get('error', msg)}); send a JSON object"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return f"{loc}: {msg}" if loc else msg


class BodyLimit:
    """Pure ASGI middleware: refuse bodies over the limit with 413 before they are buffered
    (uploads to POST /v1/models get the larger upload limit)."""

    def __init__(self, app, settings: Settings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        upload = scope["path"].rstrip("/") == "/v1/models"
        limit = self.settings.max_upload_bytes if upload else self.settings.max_body_bytes
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            return await _error(413, "body_too_large", f"the request body is {declared} bytes; the limit is {limit} "
                                "bytes (BITPLAN_MAX_UPLOAD_BYTES / BITPLAN_MAX_BODY_BYTES)")(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise ApiError(413, "body_too_large", f"the request body exceeds the limit of {limit} bytes")
            return msg
        return await self.app(scope, limited, send)


def _job_json(row, policy_ids: list[str]) -> dict:
    """JobOut as plain JSON without re-validating it (the response model documents the shape): the
    stored request was validated when the job was created, and every progress poll comes here."""
    iso = lambda t: None if t is None else t.isoformat().replace("+00:00", "Z")
    return {"id": row.id, "model_id": row.model_id, "status": row.status, "phase": row.phase,
            "progress": row.progress, "message": row.message, "request": row.request,
            "created_at": iso(row.created_at), "started_at": iso(row.started_at), "finished_at": iso(row.finished_at),
            "timings": row.timings or {}, "error": row.error, "attempts": row.attempts,
            "sensitivity_id": row.sensitivity_id, "sensitivity_cached": row.sensitivity_cached,
            "policy_ids": policy_ids}


def _json(data, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


def _model_out(row) -> ModelOut:
    return ModelOut(id=row.id, ref=row.ref, kind=row.kind, metric=row.metric, n_layers=row.n_layers,
                    n_weights=row.n_weights, created_at=row.created_at)


def _event_out(e) -> JobEvent:
    return JobEvent(seq=e.seq, at=e.at, status=e.status, phase=e.phase, progress=e.progress, message=e.message)


def _init_ray(settings: Settings) -> None:
    if ray.is_initialized():
        return
    env = {"BITPLAN_UPLOAD_DIR": str(settings.upload_dir), "BITPLAN_EVOLVED_DIR": str(settings.evolved_dir)}
    for k in ("BITPLAN_MODEL_ROOT", "BITPLAN_DATA_DIR", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(k):
            env[k] = os.environ[k]
    kw: dict[str, Any] = {"runtime_env": {"env_vars": env}, "logging_level": logging.WARNING,
                          "log_to_driver": True, "ignore_reinit_error": True}
    if settings.ray_address:
        ray.init(address=settings.ray_address, **kw)
    else:
        ray.init(num_cpus=settings.ray_num_cpus, include_dashboard=False, **kw)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        settings.upload_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("BITPLAN_UPLOAD_DIR", str(settings.upload_dir))
        os.environ["BITPLAN_EVOLVED_DIR"] = str(settings.evolved_dir)
        migrate(settings.database_url)
        store = Store(settings.database_url)
        _init_ray(settings)
        dispatcher = Dispatcher(store, settings)
        dispatcher.start()
        app.state.store, app.state.dispatcher = store, dispatcher
        log.info("bitplan ready: database %s, ray %s", store.engine.url.render_as_string(hide_password=True),
                 settings.ray_address or "local")
        try:
            yield
        finally:
            dispatcher.stop()
            store.engine.dispose()

    app = FastAPI(title="bitplan", version="0.1.0", lifespan=lifespan,
                  description="Mixed-precision quantization policies as a service. Errors are JSON "
                              "`{code, message, detail}`.")
    app.state.settings = settings
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"],
                           allow_headers=["*"])
    app.add_middleware(BodyLimit, settings=settings)

    @app.exception_handler(ApiError)
    async def _api_error(_req, e: ApiError):
        return _error(e.status, e.code, e.message, e.detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req, e: RequestValidationError):
        errors = e.errors()
        return _error(422, "invalid_request", _validation_message(errors),
                      [{"loc": list(x.get("loc", ())), "msg": x.get("msg")} for x in errors][:20])

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(e.status_code, "http_error")
        msg = "no such endpoint; see /docs" if e.status_code == 404 and e.detail == "Not Found" else str(e.detail)
        return _error(e.status_code, code, msg)

    @app.exception_handler(Exception)
    async def _internal(_req, e: Exception):
        log.exception("unhandled error")
        return _error(500, "internal", f"internal error ({type(e).__name__}); this is a bitplan bug, please report it")

    async def auth(authorization: str | None = Header(default=None)) -> None:  # async: no thread hop
        token = settings.api_token
        if not token:
            return
        given = authorization[7:] if authorization and authorization.startswith("Bearer ") else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError(401, "unauthorized", "missing or wrong API token: send 'Authorization: Bearer <token>' "
                           "(the server's BITPLAN_API_TOKEN)")

    async def store(request: Request) -> Store:
        return request.app.state.store

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(auth)])

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz(request: Request):
        checks = {}
        try:
            request.app.state.store.ping()
            checks["database"] = "ok"
        except Exception as e:
            checks["database"] = f"unreachable: {type(e).__name__}"
        try:
            checks["ray"] = "ok" if ray.is_initialized() and ray.cluster_resources().get("CPU", 0) > 0 else "no CPUs"
        except Exception as e:
            checks["ray"] = f"unreachable: {type(e).__name__}"
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503)

    # models -------------------------------------------------------------------------------
    async def _inspect(ref: str) -> dict:
        from workers.ray_jobs import inspect_model
        try:
            info = await asyncio.wait_for(asyncio.wrap_future(inspect_model.remote(ref).future()), timeout=900)
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"loading {ref!r} took more than 15 minutes") from None
        if not info["ok"]:
            raise ApiError(422, "invalid_model", info["error"])
        return info

    def _check_server_path(ref: str) -> None:
        root = os.environ.get("BITPLAN_MODEL_ROOT")
        kind, _, path = ref.partition(":")
        if not root:
            raise ApiError(403, "path_not_allowed", f"this server accepts no server-side paths ({kind}:…): "
                           "its administrator has not set BITPLAN_MODEL_ROOT; upload a TorchScript file instead")
        p = Path(path).expanduser().resolve()
        if not p.is_relative_to(Path(root).resolve()):
            raise ApiError(403, "path_not_allowed", f"{path!r} is outside the allowed model root {root!r}")

    @v1.post("/models", response_model=ModelOut, status_code=201, tags=["models"],
             openapi_extra={"requestBody": {"content": {
                 "application/json": {"schema": ModelCreate.model_json_schema()},
                 "multipart/form-data": {"schema": {"type": "object", "properties": {
                     "file": {"type": "string", "format": "binary", "description": "a torch.jit.save archive"}}}}}}})
    async def register_model(request: Request):
        """Register by reference (JSON ``{"ref": …}``) or upload a TorchScript archive
        (multipart field ``file``). Same weights → same record (200 instead of 201)."""
        ctype = request.headers.get("content-type", "")
        st: Store = request.app.state.store
        if ctype.startswith("multipart/form-data"):
            ref = await _save_upload(request)
        else:
            try:
                body = ModelCreate.model_validate_json(await request.body())
            except ValidationError as e:
                raise ApiError(422, "invalid_request", _validation_message(e.errors())) from None
            ref = body.ref.strip()
            if ref.startswith(("hf:", "torchscript:")):
                _check_server_path(ref)
            elif not ref.startswith("builtin:"):
                raise ApiError(422, "invalid_model", f"unknown model reference {ref!r}: use builtin:minilm-l6, "
                               "builtin:smollm2-135m, builtin:digits-cnn, hf:<dir> under the model root, or upload a "
                               "TorchScript file")
        info = await _inspect(ref)
        existed = await asyncio.to_thread(st.get_model, info["id"])
        row = existed or await asyncio.to_thread(st.add_model, info)
        return JSONResponse(_model_out(row).model_dump(mode="json"), status_code=200 if existed else 201)

    async def _save_upload(request: Request) -> str:
        form = await request.form(max_files=1, max_fields=4)
        f = form.get("file")
        if f is None or isinstance(f, str):
            raise ApiError(422, "invalid_request", "multipart upload needs a 'file' field holding a TorchScript archive")
        h, size = hashlib.sha256(), 0
        tmp = settings.upload_dir / f".upload-{os.getpid()}-{id(f)}"
        with open(tmp, "wb") as out:
            while chunk := await f.read(1 << 20):
                size += len(chunk)
                if size > settings.max_upload_bytes:
                    out.close()
                    tmp.unlink(missing_ok=True)
                    raise ApiError(413, "upload_too_large", f"the upload exceeds {settings.max_upload_bytes} bytes")
                h.update(chunk)
                out.write(chunk)
        if size == 0:
            tmp.unlink(missing_ok=True)
            raise ApiError(422, "invalid_model", "the uploaded file is empty; upload a torch.jit.save archive")
        with open(tmp, "rb") as fh:
            magic = fh.read(4)
        if magic != b"PK\x03\x04":  # TorchScript archives are zip files; pickles are not
            tmp.unlink(missing_ok=True)
            raise ApiError(422, "invalid_model", "the upload is not a TorchScript archive (torch.jit.save writes a zip "
                           "file); pickled models are never accepted")
        final = settings.upload_dir / f"{h.hexdigest()}.pt"
        tmp.replace(final)
        return f"torchscript:{final}"

    @v1.get("/models", response_model=list[ModelOut], tags=["models"])
    def list_models(st: Store = Depends(store)):
        return [_model_out(r) for r in st.list_models()]

    @v1.get("/models/{model_id}", response_model=ModelOut, tags=["models"])
    def get_model(model_id: str, st: Store = Depends(store)):
        row = st.get_model(model_id)
        if row is None:
            raise ApiError(404, "not_found", f"no model {model_id!r}; register it with POST /v1/models")
        return _model_out(row)

    @v1.get("/models/{model_id}/policies", response_model=list[PolicySummary], tags=["policies"])
    def model_policies(model_id: str, st: Store = Depends(store)):
        if st.get_model(model_id) is None:
            raise ApiError(404, "not_found", f"no model {model_id!r}; register it with POST /v1/models")
        out = []
        for p in st.list_policies(model_id):
            m = p.data.get("measured") or {}
            out.append(PolicySummary(id=p.id, job_id=p.job_id, model_id=p.model_id, budget=p.data.get("budget", {}),
                                     cost=p.data.get("cost", {}), metric=m.get("metric"), value=m.get("value"),
                                     created_at=p.created_at))
        return out

    # jobs ---------------------------------------------------------------------------------
    @v1.post("/jobs", response_model=JobOut, status_code=201, tags=["jobs"],
             responses={200: {"model": JobOut, "description": "replay of an earlier request with this Idempotency-Key"},
                        409: {"model": ErrorBody}, 422: {"model": ErrorBody}})
    def submit_job(body: JobCreate, request: Request,
                   idempotency_key: str | None = Header(default=None, max_length=255)):
        from service.jobspec import plan_job

        st: Store = request.app.state.store
        model = st.get_model(body.model_id)
        if model is None:
            raise ApiError(404, "unknown_model", f"no model {body.model_id!r}; register it first with POST /v1/models "
                           "and use the id it returns")
        try:
            plan = plan_job(body, model.ref, model.id, model.kind, model.info["layers"])
        except ValidationError as e:
            raise ApiError(422, "invalid_request", _validation_message(e.errors())) from None
        except ValueError as e:
            raise ApiError(422, "invalid_request", str(e).splitlines()[0]) from None
        try:
            row, created = st.create_job(model.id, body.model_dump(mode="json"), plan.request_hash,
                                         plan.sensitivity_key, idempotency_key)
        except Conflict as e:
            raise ApiError(409, "idempotency_conflict", str(e)) from None
        request.app.state.dispatcher.wake.set()
        return _json(_job_json(row, st.policy_ids([row.id])[row.id]), status=201 if created else 200,
                     headers={"Location": f"/v1/jobs/{row.id}"})

    @v1.get("/jobs", response_model=JobPage, tags=["jobs"])
    async def list_jobs(st: Store = Depends(store),
                  status: str | None = Query(default=None, pattern="^(queued|running|succeeded|failed|cancelled)$"),
                  model_id: str | None = Query(default=None, max_length=128), cursor: str | None = None,
                  limit: int = Query(default=50, ge=1, le=500)):
        try:
            rows, nxt = st.list_jobs(status, model_id, cursor, limit)
        except BadCursor as e:
            raise ApiError(422, "invalid_cursor", str(e)) from None
        pids = st.policy_ids([r.id for r in rows])
        return _json({"items": [_job_json(r, pids[r.id]) for r in rows], "next_cursor": nxt})

    def _job(st: Store, job_id: str):
        row = st.get_job(job_id)
        if row is None:
            raise ApiError(404, "not_found", f"no job {job_id!r}")
        return row

    @v1.get("/jobs/{job_id}", response_model=JobOut, tags=["jobs"])
    async def get_job(job_id: str, st: Store = Depends(store)):
        # Inline, not in the thread pool: two indexed lookups take well under a millisecond, and
        # under many pollers the thread hand-off and GIL convoy cost more than the query.
        row, pids = st.job_with_policies(job_id)
        if row is None:
            raise ApiError(404, "not_found", f"no job {job_id!r}")
        return _json(_job_json(row, pids))

    @v1.post("/jobs/{job_id}/cancel", response_model=JobOut, tags=["jobs"])
    def cancel_job(job_id: str, request: Request, st: Store = Depends(store)):
        _job(st, job_id)
        try:
            row = st.request_cancel(job_id)
        except Conflict as e:
            raise ApiError(409, "not_cancellable", str(e)) from None
        request.app.state.dispatcher.wake.set()
        return _json(_job_json(row, st.policy_ids([row.id])[row.id]))

    @v1.get("/jobs/{job_id}/events", tags=["jobs"], response_model=list[JobEvent],
            responses={200: {"content": {"text/event-stream": {}}}})
    async def job_events(job_id: str, request: Request, after: int = Query(default=0, ge=0)):
        """The job's progress log. With ``Accept: text/event-stream`` it is a Server-Sent
        Events stream that follows the job until it ends (event ``progress``; ``end`` last)."""
        st: Store = request.app.state.store
        await asyncio.to_thread(_job, st, job_id)
        if "text/event-stream" not in request.headers.get("accept", ""):
            return [_event_out(e) for e in await asyncio.to_thread(st.events, job_id, after)]
        last_id = request.headers.get("last-event-id")
        start = int(last_id) if last_id and last_id.isdigit() else after

        async def stream():
            seq = start
            while True:
                events = await asyncio.to_thread(st.events, job_id, seq)
                for e in events:
                    seq = e.seq
                    yield f"id: {e.seq}\nevent: progress\ndata: {_event_out(e).model_dump_json()}\n\n"
                job = await asyncio.to_thread(st.get_job, job_id)
                if job.status in TERMINAL and not events:
                    yield f"event: end\ndata: {json.dumps({'status': job.status})}\n\n"
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.25)
        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # policies and tables ------------------------------------------------------------------
    @v1.get("/policies/{policy_id}", tags=["policies"], responses={200: {"description": "bitplan.policy/v1 JSON"}})
    def get_policy(policy_id: str, st: Store = Depends(store)):
        row = st.get_policy(policy_id)
        if row is None:
            raise ApiError(404, "not_found", f"no policy {policy_id!r}")
        return JSONResponse(row.data, headers={"X-Bitplan-Job": row.job_id, "Cache-Control": "public, max-age=31536000, immutable"})

    @v1.get("/policies/{policy_id}/export", tags=["policies"],
            responses={200: {"description": "the policy in the target's config format"}, 422: {"model": ErrorBody}})
    def export_policy(policy_id: str, request: Request, st: Store = Depends(store),
                      format: str = Query(..., description="gptqmodel | compressed-tensors | llmcompressor-recipe | "
                                                           "llamacpp | modelopt")):
        """Policies never change, so exports are immutable: an ETag lets clients revalidate."""
        from search.exports import ExportError, export
        from search.policy import Policy
        row = st.get_policy(policy_id)
        if row is None:
            raise ApiError(404, "not_found", f"no policy {policy_id!r}")
        try:
            out = export(Policy.model_validate(row.data), format)
        except ExportError as e:
            raise ApiError(422, "not_exportable", str(e)) from None
        etag = '"' + hashlib.sha256(f"{policy_id}|{format}|{out.text}".encode()).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "Cache-Control": "public, max-age=31536000, immutable",
                   "Content-Disposition": f'attachment; filename="{policy_id}-{out.filename}"'}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(out.text, media_type=out.media_type, headers=headers)

    @v1.get("/sensitivities/{table_id}", tags=["sensitivities"],
            responses={200: {"description": "bitplan.sensitivity/v1 JSON"}})
    def get_table(table_id: str, st: Store = Depends(store)):
        row = st.get_table(table_id)
        if row is None:
            raise ApiError(404, "not_found", f"no sensitivity table {table_id!r}")
        return JSONResponse({**row.data, "id": row.id})

    @v1.get("/models/{model_id}/sensitivities", response_model=list[SensitivitySummary], tags=["sensitivities"])
    def model_tables(model_id: str, st: Store = Depends(store)):
        return [SensitivitySummary(id=r.id, key=r.key, model_id=r.model_id, proxy=r.proxy, created_at=r.created_at)
                for r in st.list_tables(model_id)]

    app.include_router(v1)

    # the dashboard: static files that talk only to /v1 (no token needed to load the page itself)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def dashboard():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    return app
