"""Uploads on their way in: a multipart file is copied (in its own threads, size- and
magic-checked, hashed) to a temporary ``.incoming-*`` name in the upload folder; the routes
validate it there and rename what they accept."""
from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path
from typing import BinaryIO

import anyio.to_thread
from fastapi import Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from service.api.errors import ApiError
from service.config import Settings

UPLOAD_THREADS = 2  # file copies get their own threads: a 512 MiB upload never holds a DB thread


def upload_name(filename: str | None) -> str:
    """The client's file name, for messages: base name only, printable, short."""
    name = "".join(c for c in Path(filename or "").name if c.isprintable())[:100]
    return name or "the upload"


def copy_upload(src: BinaryIO, dst: Path, limit: int, model: bool = True) -> str:
    """Copy an uploaded file to ``dst`` (thread pool), checking its size (and for a model the zip
    magic); sha256 hex. Removes ``dst`` when it refuses."""
    h, size = hashlib.sha256(), 0
    try:
        with open(dst, "wb") as out:
            while chunk := src.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, "upload_too_large", f"the upload exceeds {limit} bytes (BITPLAN_MAX_UPLOAD_BYTES)")
                if model and size == len(chunk) and chunk[:4] != b"PK\x03\x04":  # .pt2 and TorchScript are zips
                    raise ApiError(422, "invalid_model", "the upload is not a TorchScript archive nor a torch.export "
                                   "program (torch.export.save and torch.jit.save write zip files); pickled models "
                                   "are never accepted")
                h.update(chunk)
                out.write(chunk)
        if size == 0:
            what = "a torch.export (.pt2) or torch.jit.save archive" if model else \
                "an image archive, a tensor file or a text file"
            raise ApiError(422, "invalid_model" if model else "invalid_data", f"the uploaded file is empty; upload {what}")
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
    return h.hexdigest()


def model_format(path: Path, name: str) -> str:
    """'export' for a torch.export program (by its contents, or a ``.pt2`` name), else
    'torchscript' (the loader says what is wrong with anything else)."""
    from search.refs import archive_kind
    return "export" if name.lower().endswith(".pt2") or archive_kind(path) == "export" else "torchscript"


def sweep_incoming(upload_dir: Path, older_than: float = 3600) -> None:
    """Remove uploads left half-validated by a crashed server (never a running one's: age)."""
    now = time.time()
    for p in upload_dir.glob(".incoming-*"):
        try:
            if now - p.stat().st_mtime > older_than:
                p.unlink()
        except OSError:
            pass


async def receive_upload(request: Request, settings: Settings, what: str,
                         model: bool = True) -> tuple[Path, str, str, dict[str, str]]:
    """(temporary file in the upload folder, sha256 of its bytes, the client's file name, the
    form's text fields)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(422, "invalid_request", f"send multipart/form-data with one field 'file' holding {what}")
    try:
        form = await request.form(max_files=1, max_fields=4)
    except (MultiPartException, StarletteHTTPException) as e:
        detail = getattr(e, "message", None) or getattr(e, "detail", "unreadable")
        raise ApiError(422, "invalid_request", f"the multipart body could not be read ({detail}); send one "
                       f"field 'file' holding {what}") from None
    try:
        f = form.get("file")
        if f is None or isinstance(f, str):
            raise ApiError(422, "invalid_request", f"file: missing; the multipart upload needs a 'file' field "
                           f"holding {what}")
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        settings.upload_dir.mkdir(parents=True, exist_ok=True)
        tmp = settings.upload_dir / f".incoming-{uuid.uuid4().hex}"
        limiter = getattr(request.app.state, "upload_limiter", None)
        sha = await anyio.to_thread.run_sync(copy_upload, f.file, tmp, settings.max_upload_bytes, model,
                                             limiter=limiter)
        return tmp, sha, upload_name(f.filename), fields
    finally:
        await form.close()
