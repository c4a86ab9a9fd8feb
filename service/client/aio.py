"""``AsyncClient``: the same SDK for asyncio code; file reads run in a thread so the event
loop never blocks on disk."""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx

from service.client.errors import raise_for
from service.client.wire import data_file, data_form, job_body, list_params, model_file, server, settled, solve_body
from service.schemas import DataOut, JobEvent, JobOut, JobPage, ModelOut, SolveOut


class AsyncClient:
    """The same API for asyncio code."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 60.0,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.url, headers = server(url, token)
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _req(self, method: str, path: str, **kw) -> httpx.Response:
        r = await self._http.request(method, path, **kw)
        raise_for(r)
        return r

    async def register_model(self, ref: str | None = None, *, export: str | Path | None = None,
                             torchscript: str | Path | None = None) -> ModelOut:
        path = model_file(ref, torchscript, export)
        if path is not None:
            data = await asyncio.to_thread(path.read_bytes)
            r = await self._req("POST", "/v1/models", files={"file": (path.name, data, "application/zip")}, timeout=None)
        else:
            r = await self._req("POST", "/v1/models", json={"ref": ref}, timeout=None)
        return ModelOut.model_validate(r.json())

    async def upload_data(self, path: str | Path, *, kind: str | None = None) -> DataOut:
        """See ``Client.upload_data``."""
        def read() -> tuple[str, bytes]:
            name, fh = data_file(path)
            with fh:
                return name, fh.read()
        name, data = await asyncio.to_thread(read)
        r = await self._req("POST", "/v1/data", files={"file": (name, data, "application/octet-stream")},
                            data=data_form(kind), timeout=None)
        return DataOut.model_validate(r.json())

    async def data(self, data_id: str) -> DataOut:
        return DataOut.model_validate((await self._req("GET", f"/v1/data/{data_id.removeprefix('upload:')}")).json())

    async def submit(self, model_id: str, budgets: dict | list[dict], *, idempotency_key: str | None = None,
                     **kw) -> JobOut:
        key = idempotency_key or uuid.uuid4().hex
        r = await self._req("POST", "/v1/jobs", json=job_body(model_id, budgets, **kw),
                            headers={"Idempotency-Key": key})
        return JobOut.model_validate(r.json())

    async def get(self, job_id: str) -> JobOut:
        return JobOut.model_validate((await self._req("GET", f"/v1/jobs/{job_id}")).json())

    async def list(self, status: str | None = None, model_id: str | None = None, cursor: str | None = None,
                   limit: int = 50) -> JobPage:
        params = list_params(status, model_id, cursor, limit)
        return JobPage.model_validate((await self._req("GET", "/v1/jobs", params=params)).json())

    async def cancel(self, job_id: str) -> JobOut:
        return JobOut.model_validate((await self._req("POST", f"/v1/jobs/{job_id}/cancel")).json())

    async def stream_events(self, job_id: str) -> AsyncIterator[JobEvent]:
        async with self._http.stream("GET", f"/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"},
                                     timeout=httpx.Timeout(None, connect=10)) as r:
            if not r.is_success:
                await r.aread()
                raise_for(r)
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
            if settled(job, deadline, timeout, raise_on_failure):
                return job
            await asyncio.sleep(poll_interval)

    async def policy(self, policy_id: str) -> dict:
        return (await self._req("GET", f"/v1/policies/{policy_id}")).json()

    async def sensitivity(self, table_id: str) -> dict:
        return (await self._req("GET", f"/v1/sensitivities/{table_id}")).json()

    async def solve_table(self, table_id: str, budgets: dict[str, float], solver: str = "ilp", *,
                          ties: list[str] | None = None, runtime: str | None = None,
                          latency_table: dict | None = None) -> SolveOut:
        """See ``Client.solve_table``."""
        body = solve_body(budgets, solver, ties=ties, runtime=runtime, latency_table=latency_table)
        return SolveOut.model_validate((await self._req("POST", f"/v1/sensitivities/{table_id}/solve",
                                                        json=body)).json())
