"""``Client``: the blocking SDK, one method per API operation, answers as the API's own
pydantic models (service/schemas.py) and errors as service.client.errors."""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from service.client.errors import raise_for
from service.client.wire import (data_file, data_form, job_body, list_params, model_file, server, settled, solve_body,
                                 sse)
from service.schemas import DataOut, JobEvent, JobOut, JobPage, ModelOut, PolicySummary, SolveOut


class Client:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None):
        self.url, headers = server(url, token)
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _req(self, method: str, path: str, **kw) -> httpx.Response:
        r = self._http.request(method, path, **kw)
        raise_for(r)
        return r

    def health(self) -> dict:
        return self._req("GET", "/readyz").json()

    def register_model(self, ref: str | None = None, *, export: str | Path | None = None,
                       torchscript: str | Path | None = None) -> ModelOut:
        """By reference (``builtin:minilm-l6``; ``hf:<dir>``, ``export:<file.pt2>``,
        ``torchscript:<file>`` on the server) or by uploading a local torch.export program
        (``export=``, a ``torch.export.save`` .pt2 file) or TorchScript archive (``torchscript=``)."""
        path = model_file(ref, torchscript, export)
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
        name, fh = data_file(path)
        with fh:
            r = self._req("POST", "/v1/data", files={"file": (name, fh, "application/octet-stream")},
                          data=data_form(kind), timeout=None)
        return DataOut.model_validate(r.json())

    def data(self, data_id: str) -> DataOut:
        """An upload's record (``upload:`` prefixes are accepted)."""
        return DataOut.model_validate(self._req("GET", f"/v1/data/{data_id.removeprefix('upload:')}").json())

    def submit(self, model_id: str, budgets: dict | list[dict], *, idempotency_key: str | None = None, **kw) -> JobOut:
        """Submit a job; retries with the same ``idempotency_key`` never create a second job
        (one is generated when not given)."""
        key = idempotency_key or uuid.uuid4().hex
        r = self._req("POST", "/v1/jobs", json=job_body(model_id, budgets, **kw), headers={"Idempotency-Key": key})
        return JobOut.model_validate(r.json())

    def get(self, job_id: str) -> JobOut:
        return JobOut.model_validate(self._req("GET", f"/v1/jobs/{job_id}").json())

    def list(self, status: str | None = None, model_id: str | None = None, cursor: str | None = None,
             limit: int = 50) -> JobPage:
        params = list_params(status, model_id, cursor, limit)
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
                raise_for(r)
            for event, data in sse(r.iter_lines()):
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
            if settled(job, deadline, timeout, raise_on_failure):
                return job
            time.sleep(poll_interval)

    def policy(self, policy_id: str) -> dict:
        """The canonical ``bitplan.policy/v1`` document."""
        return self._req("GET", f"/v1/policies/{policy_id}").json()

    def model_policies(self, model_id: str) -> list[PolicySummary]:
        return [PolicySummary.model_validate(p) for p in self._req("GET", f"/v1/models/{model_id}/policies").json()]

    def sensitivity(self, table_id: str) -> dict:
        return self._req("GET", f"/v1/sensitivities/{table_id}").json()

    def solve_table(self, table_id: str, budgets: dict[str, float], solver: str = "ilp", *,
                    ties: list[str] | None = None, runtime: str | None = None,
                    latency_table: dict | None = None) -> SolveOut:
        """Solve a new budget on a stored sensitivity table (a job's ``sensitivity_id``) without
        a job: the layer → format labels, the cost, the predicted loss increase (``objective``),
        the bound and gap, and ``server_ms``. Nothing is stored. ``solver``: ilp, lp, convex or
        pareto; ``ties``/``runtime`` as in a job; ``latency_table`` for a latency_ms budget."""
        body = solve_body(budgets, solver, ties=ties, runtime=runtime, latency_table=latency_table)
        return SolveOut.model_validate(self._req("POST", f"/v1/sensitivities/{table_id}/solve", json=body).json())
