"""Python SDK for the bitplan service: ``Client`` (sync) and ``AsyncClient`` over httpx.

Imports only httpx, pydantic and ``service.schemas`` — no torch, Ray, SQLAlchemy or FastAPI —
so it installs on a laptop. Server errors become typed exceptions carrying the server's
message::

    from service.client import Client
    with Client("http://127.0.0.1:8000", token=None) as c:
        model = c.register_model("builtin:minilm-l6")
        job = c.submit(model.id, budgets={"avg_bits": 3.3}, formats={"bits": [2, 3, 4, 8]})
        job = c.wait(job.id, timeout=600, on_progress=lambda j: print(j.phase, j.progress))
        policy = c.policy(job.policy_ids[0])

Your own model and data: ``c.register_model(export="net.pt2")`` (a torch.export program) and
``data = c.upload_data("photos/")`` (a folder of images, zipped on the fly; or a .zip/.tar.gz,
.safetensors/.npz, .txt/.jsonl file), then ``c.submit(model.id, {"avg_bits": 4},
calibration={"source": data.source}, image_size=224, image_mean=[0.485, 0.456, 0.406],
image_std=[0.229, 0.224, 0.225])``.
"""
from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from service.schemas import TERMINAL, DataOut, JobCreate, JobStatus, JobEvent, JobOut, JobPage, ModelOut, PolicySummary

DEFAULT_URL = "http://127.0.0.1:8000"


class BitplanError(Exception):
    """An error answer from the server: ``status`` (HTTP), ``code`` and the server's ``message``."""

    def __init__(self, status: int, code: str, message: str, detail: Any = None):
        super().__init__(f"{message} ({status} {code})")
        self.status, self.code, self.message, self.detail = status, code, message, detail


class InvalidRequest(BitplanError):
    """422/400/413: change the request as the message says."""


class Unauthorized(BitplanError):
    pass


class NotFound(BitplanError):
    pass


class ConflictError(BitplanError):
    """409: idempotency key reused with another body, or a job that can no longer be cancelled."""


class ServerError(BitplanError):
    pass


class JobFailed(BitplanError):
    """``wait`` saw the job end ``failed`` or ``cancelled``; ``job`` holds its final state."""

    def __init__(self, job: JobOut):
        super().__init__(200, job.status, job.error or job.message)
        self.job = job


class WaitTimeout(TimeoutError):
    def __init__(self, job: JobOut, timeout: float):
        super().__init__(f"job {job.id} still {job.status} ({job.phase}, {job.progress:.0%}) after {timeout:g}s")
        self.job = job


def _raise_for(r: httpx.Response) -> None:
    if r.is_success:
        return
    try:
        body = r.json()
        code, message, detail = body.get("code", "error"), body.get("message", r.text), body.get("detail")
    except ValueError:
        code, message, detail = "error", r.text or r.reason_phrase, None
    cls = {401: Unauthorized, 403: InvalidRequest, 404: NotFound, 409: ConflictError}.get(r.status_code)
    if cls is None:
        cls = ServerError if r.status_code >= 500 else InvalidRequest
    raise cls(r.status_code, code, message, detail)


def _settled(job: JobOut, deadline: float, timeout: float, raise_on_failure: bool) -> bool:
    """One step of ``wait`` shared by both clients: True when the job has ended (raising
    JobFailed if it did not succeed and the caller asked for that), WaitTimeout past the deadline."""
    if job.status in TERMINAL:
        if job.status != JobStatus.SUCCEEDED and raise_on_failure:
            raise JobFailed(job)
        return True
    if time.monotonic() > deadline:
        raise WaitTimeout(job, timeout)
    return False


def _list_params(status, model_id, cursor, limit) -> dict:
    return {k: v for k, v in {"status": status, "model_id": model_id, "cursor": cursor, "limit": limit}.items()
            if v is not None}


def _model_file(ref, torchscript, export) -> Path | None:
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


def _data_file(path: str | Path):
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


def _data_form(kind: str | None) -> dict:
    return {"kind": kind} if kind else {}


def _headers(token: str | None) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _job_body(model_id: str, budgets, **kw) -> dict:
    return JobCreate(model_id=model_id, budgets=budgets, **{k: v for k, v in kw.items() if v is not None}) \
        .model_dump(mode="json", exclude_unset=True)


def _sse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
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


class Client:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None):
        self.url = (url or os.environ.get("BITPLAN_URL") or DEFAULT_URL).rstrip("/")
        token = token if token is not None else os.environ.get("BITPLAN_API_TOKEN")
        self._http = httpx.Client(base_url=self.url, headers=_headers(token), timeout=timeout, transport=transport)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _req(self, method: str, path: str, **kw) -> httpx.Response:
        r = self._http.request(method, path, **kw)
        _raise_for(r)
        return r

    def health(self) -> dict:
        return self._req("GET", "/readyz").json()

    def register_model(self, ref: str | None = None, *, export: str | Path | None = None,
                       torchscript: str | Path | None = None) -> ModelOut:
        """By reference (``builtin:minilm-l6``; ``hf:<dir>``, ``export:<file.pt2>``,
        ``torchscript:<file>`` on the server) or by uploading a local torch.export program
        (``export=``, a ``torch.export.save`` .pt2 file) or TorchScript archive (``torchscript=``)."""
        path = _model_file(ref, torchscript, export)
        if path is not None:
            with open(path, "rb") as fh:
                r = self._req("POST", "/v1/models", files={"file": (path.name, fh, "application/zip")}, timeout=None)
        else:
            r = self._req("POST", "/v1/models", json={"ref": ref}, timeout=None)
        return ModelOut.model_validate(r.json())

    def upload_data(self, path: str | Path, *, kind: str | None = None) -> DataOut:
        """Upload calibration/evaluation data: a folder of images (optionally in ``class/``
        subfolders; zipped on the fly), a .zip/.tar(.gz) of one, a .safetensors/.npz file
        (``inputs``, optional ``labels``) or a .txt/.jsonl file. Jobs name it by the returned
        ``source`` (``upload:<id>``); the same bytes give the same record."""
        name, fh = _data_file(path)
        with fh:
            r = self._req("POST", "/v1/data", files={"file": (name, fh, "application/octet-stream")},
                          data=_data_form(kind), timeout=None)
        return DataOut.model_validate(r.json())

    def data(self, data_id: str) -> DataOut:
        """An upload's record (``upload:`` prefixes are accepted)."""
        return DataOut.model_validate(self._req("GET", f"/v1/data/{data_id.removeprefix('upload:')}").json())

    def submit(self, model_id: str, budgets: dict | list[dict], *, idempotency_key: str | None = None, **kw) -> JobOut:
        """Submit a job; retries with the same ``idempotency_key`` never create a second job
        (one is generated when not given)."""
        key = idempotency_key or uuid.uuid4().hex
        r = self._req("POST", "/v1/jobs", json=_job_body(model_id, budgets, **kw), headers={"Idempotency-Key": key})
        return JobOut.model_validate(r.json())

    def get(self, job_id: str) -> JobOut:
        return JobOut.model_validate(self._req("GET", f"/v1/jobs/{job_id}").json())

    def list(self, status: str | None = None, model_id: str | None = None, cursor: str | None = None,
             limit: int = 50) -> JobPage:
        params = _list_params(status, model_id, cursor, limit)
        return JobPage.model_validate(self._req("GET", "/v1/jobs", params=params).json())

    def cancel(self, job_id: str) -> JobOut:
        return JobOut.model_validate(self._req("POST", f"/v1/jobs/{job_id}/cancel").json())

    def events(self, job_id: str, after: int = 0) -> list[JobEvent]:
        return [JobEvent.model_validate(e) for e in self._req("GET", f"/v1/jobs/{job_id}/events",
                                                              params={"after": after}).json()]

    def stream_events(self, job_id: str) -> Iterator[JobEvent]:
        """Server-Sent Events: yields each progress event until the job ends."""
        with self._http.stream("GET", f"/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"},
                               timeout=httpx.Timeout(None, connect=10)) as r:
            if not r.is_success:
                r.read()
                _raise_for(r)
            for event, data in _sse(r.iter_lines()):
                if event == "end":
                    return
                yield JobEvent.model_validate_json(data)

    def wait(self, job_id: str, timeout: float = 3600, poll_interval: float = 1.0,
             on_progress: Callable[[JobOut], None] | None = None, raise_on_failure: bool = True) -> JobOut:
        """Poll until the job ends. Raises JobFailed for failed/cancelled jobs (unless
        ``raise_on_failure=False``) and WaitTimeout after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if on_progress:
                on_progress(job)
            if _settled(job, deadline, timeout, raise_on_failure):
                return job
            time.sleep(poll_interval)

    def policy(self, policy_id: str) -> dict:
        """The canonical ``bitplan.policy/v1`` document."""
        return self._req("GET", f"/v1/policies/{policy_id}").json()

    def model_policies(self, model_id: str) -> list[PolicySummary]:
        return [PolicySummary.model_validate(p) for p in self._req("GET", f"/v1/models/{model_id}/policies").json()]

    def sensitivity(self, table_id: str) -> dict:
        return self._req("GET", f"/v1/sensitivities/{table_id}").json()


class AsyncClient:
    """The same API for asyncio code."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 60.0,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.url = (url or os.environ.get("BITPLAN_URL") or DEFAULT_URL).rstrip("/")
        token = token if token is not None else os.environ.get("BITPLAN_API_TOKEN")
        self._http = httpx.AsyncClient(base_url=self.url, headers=_headers(token), timeout=timeout, transport=transport)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _req(self, method: str, path: str, **kw) -> httpx.Response:
        r = await self._http.request(method, path, **kw)
        _raise_for(r)
        return r

    async def register_model(self, ref: str | None = None, *, export: str | Path | None = None,
                             torchscript: str | Path | None = None) -> ModelOut:
        path = _model_file(ref, torchscript, export)
        if path is not None:
            data = await asyncio.to_thread(path.read_bytes)
            r = await self._req("POST", "/v1/models", files={"file": (path.name, data, "application/zip")}, timeout=None)
        else:
            r = await self._req("POST", "/v1/models", json={"ref": ref}, timeout=None)
        return ModelOut.model_validate(r.json())

    async def upload_data(self, path: str | Path, *, kind: str | None = None) -> DataOut:
        """See ``Client.upload_data``."""
        def read() -> tuple[str, bytes]:
            name, fh = _data_file(path)
            with fh:
                return name, fh.read()
        name, data = await asyncio.to_thread(read)
        r = await self._req("POST", "/v1/data", files={"file": (name, data, "application/octet-stream")},
                            data=_data_form(kind), timeout=None)
        return DataOut.model_validate(r.json())

    async def data(self, data_id: str) -> DataOut:
        return DataOut.model_validate((await self._req("GET", f"/v1/data/{data_id.removeprefix('upload:')}")).json())

    async def submit(self, model_id: str, budgets: dict | list[dict], *, idempotency_key: str | None = None,
                     **kw) -> JobOut:
        key = idempotency_key or uuid.uuid4().hex
        r = await self._req("POST", "/v1/jobs", json=_job_body(model_id, budgets, **kw),
                            headers={"Idempotency-Key": key})
        return JobOut.model_validate(r.json())

    async def get(self, job_id: str) -> JobOut:
        return JobOut.model_validate((await self._req("GET", f"/v1/jobs/{job_id}")).json())

    async def list(self, status: str | None = None, model_id: str | None = None, cursor: str | None = None,
                   limit: int = 50) -> JobPage:
        params = _list_params(status, model_id, cursor, limit)
        return JobPage.model_validate((await self._req("GET", "/v1/jobs", params=params)).json())

    async def cancel(self, job_id: str) -> JobOut:
        return JobOut.model_validate((await self._req("POST", f"/v1/jobs/{job_id}/cancel")).json())

    async def stream_events(self, job_id: str) -> AsyncIterator[JobEvent]:
        async with self._http.stream("GET", f"/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"},
                                     timeout=httpx.Timeout(None, connect=10)) as r:
            if not r.is_success:
                await r.aread()
                _raise_for(r)
            event, data = "message", []
            async for line in r.aiter_lines():
                if line == "":
                    if event == "end":
                        return
                    if data:
                        yield JobEvent.model_validate_json("\n".join(data))
                    event, data = "message", []
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())

    async def wait(self, job_id: str, timeout: float = 3600, poll_interval: float = 1.0,
                   on_progress: Callable[[JobOut], None] | None = None, raise_on_failure: bool = True) -> JobOut:
        deadline = time.monotonic() + timeout
        while True:
            job = await self.get(job_id)
            if on_progress:
                on_progress(job)
            if _settled(job, deadline, timeout, raise_on_failure):
                return job
            await asyncio.sleep(poll_interval)

    async def policy(self, policy_id: str) -> dict:
        return (await self._req("GET", f"/v1/policies/{policy_id}")).json()


__all__ = ["Client", "AsyncClient", "BitplanError", "InvalidRequest", "Unauthorized", "NotFound", "ConflictError",
           "ServerError", "JobFailed", "WaitTimeout"]
