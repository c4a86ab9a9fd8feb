"""What both clients send and read, apart from the HTTP calls themselves: the server and token
(arguments, else BITPLAN_URL / BITPLAN_API_TOKEN), request bodies and parameters, the files an
upload sends, Server-Sent Events, and the one step of ``wait``."""
from __future__ import annotations

import os
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

from service.client.errors import JobFailed, WaitTimeout
from service.schemas import TERMINAL, JobCreate, JobOut, JobStatus, SolveRequest

DEFAULT_URL = "http://127.0.0.1:8000"


def server(url: str | None, token: str | None) -> tuple[str, dict]:
    """(base URL, headers): the arguments, else the SDK's environment, else the local default."""
    url = (url or os.environ.get("BITPLAN_URL") or DEFAULT_URL).rstrip("/")
    token = token if token is not None else os.environ.get("BITPLAN_API_TOKEN")
    return url, headers(token)


def headers(token: str | None) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


def settled(job: JobOut, deadline: float, timeout: float, raise_on_failure: bool) -> bool:
    """One step of ``wait`` shared by both clients: True when the job has ended (raising
    JobFailed if it did not succeed and the caller asked for that), WaitTimeout past the deadline."""
    if job.status in TERMINAL:
        if job.status != JobStatus.SUCCEEDED and raise_on_failure:
            raise JobFailed(job)
        return True
    if time.monotonic() > deadline:
        raise WaitTimeout(job, timeout)
    return False


def list_params(status, model_id, cursor, limit) -> dict:
    return {k: v for k, v in {"status": status, "model_id": model_id, "cursor": cursor, "limit": limit}.items()
            if v is not None}


def job_body(model_id: str, budgets, **kw) -> dict:
    return JobCreate(model_id=model_id, budgets=budgets, **{k: v for k, v in kw.items() if v is not None}) \
        .model_dump(mode="json", exclude_unset=True)


def solve_body(budgets: dict, solver: str, **kw) -> dict:
    """The body of POST /v1/sensitivities/{id}/solve, checked here as the server checks it."""
    return SolveRequest(budgets=budgets, solver=solver, **{k: v for k, v in kw.items() if v is not None}) \
        .model_dump(mode="json", exclude_unset=True)


def model_file(ref, torchscript, export) -> Path | None:
    """The local file to upload (or None to register ``ref``); exactly one of the three."""
    if sum(x is not None for x in (ref, torchscript, export)) != 1:
        raise ValueError("give one of: a model reference, export=<file.pt2> or torchscript=<file>")
    path = export if export is not None else torchscript
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    return path


def data_file(path: str | Path):
    """(file name, open binary file) to upload for ``upload_data``: a file as it is; a folder
    zipped (stored, not compressed: images are compressed already) into a temporary file, with
    paths relative to the folder and fixed timestamps (the same files give the same upload id);
    hidden files and links are left out."""
    path = Path(path)
    if path.is_file():
        return path.name, open(path, "rb")
    if not path.is_dir():
        raise ValueError(f"{path}: no such file or folder")
    tmp = tempfile.TemporaryFile()
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(path.rglob("*")):
            rel = f.relative_to(path)
            if f.is_file() and not f.is_symlink() and not any(p.startswith(".") for p in rel.parts):
                info = zipfile.ZipInfo(rel.as_posix(), date_time=(1980, 1, 1, 0, 0, 0))  # same files, same id
                info.external_attr = 0o644 << 16
                with open(f, "rb") as src, zf.open(info, "w") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
    tmp.seek(0)
    return f"{path.resolve().name or 'data'}.zip", tmp


def data_form(kind: str | None) -> dict:
    return {"kind": kind} if kind else {}


def sse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) of each Server-Sent Event in a stream of lines."""
    event, data = "message", []
    for line in lines:
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
