"""/v1/data: upload calibration/evaluation data (validated, then stored by the sha256 of its
bytes; service/uploads/ knows the formats) and read an upload's record."""
from __future__ import annotations

from pathlib import Path

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service import uploads
from service.api.deps import SettingsDep
from service.api.errors import ApiError, errors
from service.api.files import receive_upload
from service.api.refs import scrub
from service.config import Settings
from service.schemas import DataOut

router = APIRouter()

_DATA_WHAT = "a .zip/.tar(.gz) of images, a .safetensors/.npz tensor file, or a .txt/.jsonl text file"


def _store(settings: Settings, tmp: Path, sha: str, name: str, kind: str | None) -> tuple[dict, bool]:
    size = tmp.stat().st_size
    limits = uploads.Limits(settings.max_upload_files, settings.max_extracted_bytes)
    try:
        return uploads.store_data(tmp, sha, size, name, settings.upload_dir, limits, kind)
    except uploads.UploadRefused as e:
        raise ApiError(e.status, e.code, scrub(e.message, {str(tmp): name, str(settings.upload_dir):
                                                           "the upload folder"})) from None


@router.post("/data", response_model=DataOut, status_code=201, tags=["data"],
             responses={200: {"model": DataOut, "description": "these bytes were already uploaded: the existing "
                                                               "record"}, **errors(413, 422, 507)},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                     "file": {"type": "string", "format": "binary", "description": _DATA_WHAT},
                     "kind": {"type": "string", "enum": list(uploads.DATA_KINDS),
                              "description": "override the kind told from the file's name and bytes"}}}}}}})
async def upload_data(request: Request, settings: SettingsDep):
    """Upload calibration/evaluation data (multipart field ``file``): a ``.zip``/``.tar(.gz)``
    of a folder of images (``class/`` subfolders = labels), a ``.safetensors``/``.npz`` file
    with ``inputs`` (optional integer ``labels``, one per sample), or a ``.txt`` (paragraphs)
    / ``.jsonl`` (``{"text": …}`` per line) file. Validated before it is kept, stored by the
    sha256 of its bytes; jobs name it as ``{"source": "upload:<id>"}``. Same bytes → the same
    record (200 instead of 201)."""
    tmp, sha, name, fields = await receive_upload(request, settings, _DATA_WHAT, model=False)
    try:
        kind = (fields.get("kind") or "").strip() or None
        limiter = getattr(request.app.state, "upload_limiter", None)
        record, created = await anyio.to_thread.run_sync(_store, settings, tmp, sha, name, kind, limiter=limiter)
    finally:
        await run_in_threadpool(tmp.unlink, True)
    return JSONResponse(DataOut.model_validate(uploads.public(record)).model_dump(mode="json"),
                        status_code=201 if created else 200, headers={"Location": f"/v1/data/{sha}"})


@router.get("/data/{data_id}", response_model=DataOut, tags=["data"], responses=errors(404))
def get_data(data_id: str, settings: SettingsDep):
    record = uploads.load_record(settings.upload_dir, data_id.strip().lower())
    if record is None:
        raise ApiError(404, "not_found", f"no uploaded data {data_id[:80]!r}; upload it with POST /v1/data")
    return DataOut.model_validate(uploads.public(record))
