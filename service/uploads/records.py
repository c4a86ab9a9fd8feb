"""Where uploads live: content-addressed under ``<upload dir>/data/<sha256>/`` beside a small
``record.json`` (no database table: the bytes are the identity). A new upload is checked in a
staging folder and renamed into place, so a half-stored one is never visible and the same
bytes stored twice at once keep one record."""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

from service.uploads.archives import store_images
from service.uploads.common import HEX64, Limits
from service.uploads.detect import detect_kind
from service.uploads.tensors import store_tensors
from service.uploads.text import store_text


def data_dir(upload_dir: Path) -> Path:
    return Path(upload_dir) / "data"


def load_record(upload_dir: Path, data_id: str) -> dict | None:
    """The stored record of an upload, or None (ids that are not sha256 hex never match)."""
    if not HEX64.fullmatch(data_id or ""):
        return None
    try:
        return json.loads((data_dir(upload_dir) / data_id / "record.json").read_text())
    except (OSError, ValueError):
        return None


def public(record: dict) -> dict:
    """The record as the API shows it (no server paths)."""
    return {k: record[k] for k in ("id", "kind", "samples", "classes", "bytes", "source", "name", "created_at")
            if k in record}


def worker_source(upload_dir: Path, record: dict) -> str:
    """The source string a worker loads for a stored upload: ``images:<dir>``, ``tensors:<file>``,
    ``text:<file>`` or ``jsonl:<file>``."""
    path = (data_dir(upload_dir) / record["id"] / record["path"]).resolve()
    return f"{record['kind']}:{path}"


def sweep_staging(upload_dir: Path, older_than: float = 3600) -> None:
    """Remove data uploads left half-stored by a crashed server."""
    now = time.time()
    for p in data_dir(upload_dir).glob(".staging-*"):
        try:
            if now - p.stat().st_mtime > older_than:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def store_data(tmp: Path, sha: str, size: int, name: str, upload_dir: Path, limits: Limits,
               kind: str | None = None) -> tuple[dict, bool]:
    """Validate the received file ``tmp`` and store it as upload ``sha``: (record, created).
    Raises UploadRefused; nothing stays behind on refusal (``tmp`` is the caller's to remove)."""
    root = data_dir(upload_dir)
    existing = load_record(upload_dir, sha)
    if existing is not None:
        return existing, False
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".staging-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        kind = detect_kind(tmp, name, kind)
        info = _check_and_keep(tmp, name, staging, limits, kind)
        record = {"id": sha, "kind": kind, "samples": info["samples"], "classes": info.get("classes"), "bytes": size,
                  "source": f"upload:{sha}", "name": name, "path": info["path"],
                  "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (staging / "record.json").write_text(json.dumps(record))
        try:
            os.rename(staging, root / sha)
        except OSError:  # the same bytes were stored by another request meanwhile
            shutil.rmtree(staging, ignore_errors=True)
            existing = load_record(upload_dir, sha)
            if existing is None:
                raise
            return existing, False
        return record, True
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _check_and_keep(tmp: Path, name: str, staging: Path, limits: Limits, kind: str) -> dict:
    """The kind's own checks, which keep the data in ``staging``: samples, classes and path."""
    if kind == "images":
        return store_images(tmp, name, staging, limits)
    if kind == "tensors":
        return store_tensors(tmp, name, staging, limits)
    return store_text(tmp, name, staging, kind)
