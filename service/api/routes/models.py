"""/v1/models: register a model (by reference, or by uploading a torch.export program or a
TorchScript archive), list and get them, and the policies and sensitivity tables made for one.

Registering loads the model in a Ray task (``inspect_model``), never in the API process: the
handler is async and awaits the task, so it holds no thread while the model loads."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from service.api.common import stored
from service.api.deps import SettingsDep, StoreDep
from service.api.errors import ApiError, errors
from service.api.files import model_format, receive_upload
from service.api.messages import validation_message
from service.api.refs import BUILTIN_REFS, REF_HELP, SERVER_REF_KINDS, resolve_server_ref, root_hide, scrub
from service.config import Settings
from service.schemas import ModelCreate, ModelOut, PolicySummary, SensitivitySummary
from service.store import Store

router = APIRouter()


def _model_out(row) -> ModelOut:
    return ModelOut(id=row.id, ref=row.ref, kind=row.kind, metric=row.metric, n_layers=row.n_layers,
                    n_weights=row.n_weights, created_at=row.created_at)


async def _inspect(ref: str, hide: dict[str, str]) -> dict:
    from workers.ray_jobs import inspect_model
    shown = scrub(ref, hide)
    try:
        info = await asyncio.wait_for(asyncio.wrap_future(inspect_model.remote(ref).future()), timeout=900)
    except asyncio.TimeoutError:
        raise ApiError(504, "timeout", f"loading {shown!r} took more than 15 minutes") from None
    if not info["ok"]:
        raise ApiError(422, "invalid_model", scrub(info["error"], hide))
    return info


async def _by_reference(request: Request, settings: Settings) -> dict:
    try:
        body = ModelCreate.model_validate_json(await request.body())
    except ValidationError as e:
        raise ApiError(422, "invalid_request", validation_message(e.errors(), ModelCreate)) from None
    ref = body.ref.strip()
    if ref.startswith(SERVER_REF_KINDS):
        resolved = await run_in_threadpool(resolve_server_ref, ref, settings.model_root)
        hide = {resolved: ref, resolved.partition(":")[2]: ref.partition(":")[2], **root_hide(settings.model_root)}
        return await _inspect(resolved, hide)
    if ref in BUILTIN_REFS:
        return await _inspect(ref, {})
    raise ApiError(422, "invalid_model", f"unknown model reference {ref[:200]!r}: {REF_HELP}")


async def _by_upload(request: Request, settings: Settings) -> tuple[dict, Path | None]:
    """Validate the upload under its temporary name; only an accepted model is renamed to
    ``<sha256>.pt2`` (torch.export) or ``<sha256>.pt`` (TorchScript). Returns (inspection,
    the stored file)."""
    tmp, sha, name, _ = await receive_upload(request, settings, "a torch.export (.pt2) or torch.jit.save archive")
    try:
        fmt = await run_in_threadpool(model_format, tmp, name)
        if fmt == "export":  # the loader may look at the suffix
            moved = tmp.with_name(tmp.name + ".pt2")
            await run_in_threadpool(os.replace, tmp, moved)
            tmp = moved
        hide = {f"{fmt}:{tmp}": name, str(tmp): name, str(settings.upload_dir): "the upload folder"}
        info = await _inspect(f"{fmt}:{tmp}", hide)
        final = settings.upload_dir / f"{sha}.{'pt2' if fmt == 'export' else 'pt'}"
        await run_in_threadpool(os.replace, tmp, final)
        info["ref"] = f"{fmt}:{final}"
        return info, final
    finally:
        await run_in_threadpool(tmp.unlink, True)  # refused, timed out or failed: nothing stays


@router.post("/models", response_model=ModelOut, status_code=201, tags=["models"],
             responses={200: {"model": ModelOut, "description": "these weights were already registered: the "
                                                                "existing record"},
                        **errors(403, 413, 422, 504)},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": ModelCreate.model_json_schema()},
                 "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                     "file": {"type": "string", "format": "binary",
                              "description": "a torch.export.save program (.pt2) or a torch.jit.save archive"}}}}}}})
async def register_model(request: Request, st: StoreDep, settings: SettingsDep):
    """Register by reference (JSON ``{"ref": …}``; ``hf:``/``export:``/``torchscript:`` paths
    are relative to the server's BITPLAN_MODEL_ROOT) or upload a torch.export program (.pt2)
    or a TorchScript archive (multipart field ``file``). Same weights → same record (200
    instead of 201)."""
    stored: Path | None = None
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        info, stored = await _by_upload(request, settings)
    else:
        info = await _by_reference(request, settings)
    existed = await run_in_threadpool(st.get_model, info["id"])
    row = existed or await run_in_threadpool(st.add_model, info)
    if existed and stored is not None and existed.ref != info["ref"]:
        await run_in_threadpool(stored.unlink, True)  # same weights, other bytes: the record keeps its file
    return JSONResponse(_model_out(row).model_dump(mode="json"), status_code=200 if existed else 201)


@router.get("/models", response_model=list[ModelOut], tags=["models"])
def list_models(st: StoreDep):
    return [_model_out(r) for r in st.list_models()]


def _model_or_404(st: Store, model_id: str):
    row = stored(model_id, "model", st.get_model, "; register it with POST /v1/models")
    return row


@router.get("/models/{model_id}", response_model=ModelOut, tags=["models"], responses=errors(404))
def get_model(model_id: str, st: StoreDep):
    return _model_out(_model_or_404(st, model_id))


# the policies and tables made for one model live under it, but are documented with their own kind
@router.get("/models/{model_id}/policies", response_model=list[PolicySummary], tags=["policies"],
            responses=errors(404))
def model_policies(model_id: str, st: StoreDep):
    _model_or_404(st, model_id)
    out = []
    for p in st.list_policies(model_id):
        m = p.data.get("measured") or {}
        out.append(PolicySummary(id=p.id, job_id=p.job_id, model_id=p.model_id, budget=p.data.get("budget", {}),
                                 cost=p.data.get("cost", {}), metric=m.get("metric"), value=m.get("value"),
                                 created_at=p.created_at))
    return out


@router.get("/models/{model_id}/sensitivities", response_model=list[SensitivitySummary], tags=["sensitivities"],
            responses=errors(404))
def model_tables(model_id: str, st: StoreDep):
    _model_or_404(st, model_id)
    return [SensitivitySummary(id=r.id, key=r.key, model_id=r.model_id, proxy=r.proxy, created_at=r.created_at)
            for r in st.list_tables(model_id)]
